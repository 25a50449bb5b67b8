-- Argo CD action "drill": run a rollback drill now (users are never affected).
-- Sets the rewind.dev/drill annotation; the operator brings the revision a rollback would
-- go to now to Available from its snapshot (optionally analysing it on mirrored traffic),
-- times it, scales it back, and records the verdict in status.lastDrill and an Event. The
-- value is unique to the object's current version (true-<resourceVersion>): the operator
-- never acts twice on a value that already acted.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local version = obj.metadata.resourceVersion or "unknown"
obj.metadata.annotations["rewind.dev/drill"] = "true-" .. version
return obj
