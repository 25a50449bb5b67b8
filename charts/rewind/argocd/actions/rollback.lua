-- Argo CD action "rollback": roll back to the last known-good revision now.
-- Sets the rewind.dev/rollback annotation; the operator acts on it, records who did it in
-- status.timeline and an Event, and removes the annotation.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["rewind.dev/rollback"] = "break glass from Argo CD"
return obj
