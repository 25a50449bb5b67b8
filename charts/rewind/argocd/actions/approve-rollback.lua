-- Argo CD action "approve-rollback": approve the pending rollback decision.
-- Sets the rewind.dev/approve-rollback annotation; the operator acts on it, records who did it in
-- status.timeline and an Event, and removes the annotation.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["rewind.dev/approve-rollback"] = "true"
return obj
