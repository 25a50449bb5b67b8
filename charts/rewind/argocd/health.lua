-- Argo CD health check for rewind.dev/ModelRelease (Lua 5.1, as run by Argo CD).
--   Healthy      Promoted, Ready=True, and the operator has seen the current generation
--   Progressing  Pending, Progressing, RollingBack, or the operator is behind the spec
--   Suspended    Paused (manual gate) or AwaitingApproval (a human must decide)
--   Degraded     RolledBack or Failed
-- The message is status.message (what the operator says is happening).
local hs = {}

local function condition(status, kind)
  if status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local status = obj.status
if status == nil or status.phase == nil or status.phase == "" then
  hs.status = "Progressing"
  hs.message = "Waiting for the Rewind operator to pick up the release"
  return hs
end

local generation = obj.metadata.generation or 0
local observed = status.observedGeneration or 0
if observed < generation then
  hs.status = "Progressing"
  hs.message = string.format(
    "Waiting for the Rewind operator to act on generation %d (last acted on %d)",
    generation, observed)
  return hs
end

local phase = status.phase
local message = status.message
if message == nil or message == "" then
  message = phase
end
hs.message = message

if phase == "Promoted" then
  local ready = condition(status, "Ready")
  if ready ~= nil and ready.status == "True" then
    hs.status = "Healthy"
  else
    hs.status = "Progressing"
    hs.message = "Promoted, waiting for Ready=True: " .. message
  end
elseif phase == "Pending" or phase == "Progressing" or phase == "RollingBack" then
  hs.status = "Progressing"
elseif phase == "Paused" or phase == "AwaitingApproval" then
  hs.status = "Suspended"
elseif phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
else
  hs.status = "Unknown"
  hs.message = "Unknown phase " .. phase .. ": " .. message
end
return hs
