-- Argo CD action "retry": start the failed revision again.
-- Sets the rewind.dev/retry annotation; the operator acts on it, records who did it in
-- status.timeline and an Event, and removes the annotation.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["rewind.dev/retry"] = "true"
return obj
