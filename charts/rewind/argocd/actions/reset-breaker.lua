-- Argo CD action "reset-breaker": send users back from the circuit breaker's fallback.
-- Sets the rewind.dev/reset-breaker annotation; the operator acts on it while the breaker
-- is tripped, records who did it in status.timeline and an Event, and removes the
-- annotation. The value is unique to the object's current version (true-<resourceVersion>):
-- the operator never acts twice on a value that already acted on the same trip.
if obj.metadata.annotations == nil then
  obj.metadata.annotations = {}
end
local version = obj.metadata.resourceVersion or "unknown"
obj.metadata.annotations["rewind.dev/reset-breaker"] = "true-" .. version
return obj
