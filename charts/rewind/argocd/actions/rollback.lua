-- Argo CD action "rollback": roll back to the last known-good revision now.
-- Sets the rewind.dev/rollback annotation; the operator acts on it, records who did it in
-- status.timeline and an Event, and removes the annotation. The value is unique to the
-- object's current version (true-<resourceVersion>, or a reason naming it): the operator
-- never acts twice on a value that already acted, so a fixed value could not act again.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local version = obj.metadata.resourceVersion or "unknown"
obj.metadata.annotations["rewind.dev/rollback"] = "break glass from Argo CD (at resourceVersion " .. version .. ")"
return obj
