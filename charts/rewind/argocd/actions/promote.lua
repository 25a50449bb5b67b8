-- Argo CD action "promote": pass the current manual gate.
-- Sets the rewind.dev/promote annotation; the operator acts on it, records who did it in
-- status.timeline and an Event, and removes the annotation.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
obj.metadata.annotations["rewind.dev/promote"] = "true"
return obj
