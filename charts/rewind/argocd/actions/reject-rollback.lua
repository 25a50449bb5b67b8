-- Argo CD action "reject-rollback": reject the pending rollback: the rollout resumes.
-- Sets the rewind.dev/reject-rollback annotation; the operator acts on it, records who did it in
-- status.timeline and an Event, and removes the annotation.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["rewind.dev/reject-rollback"] = "rejected in Argo CD"
return obj
