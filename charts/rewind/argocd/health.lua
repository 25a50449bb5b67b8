-- Argo CD health check for rewind.dev/ModelRelease.
-- Argo CD runs it in gopher-lua (Lua 5.1) with only the base, table and package libraries
-- (and os through require): no string, no math. Build messages with .. and tostring.
-- First match wins:
--   Progressing  no status yet, or metadata.generation ahead of status.observedGeneration
--   Degraded     condition Stalled=True (message: its reason and message)
--   Degraded     phase RolledBack or Failed (the operator also sets Stalled=True there)
--   Suspended    phase Paused (a manual gate) or AwaitingApproval (a human must decide)
--   Progressing  condition Reconciling=True
--   Healthy      condition Ready=True
--   Progressing  anything else: not Ready yet (Pending, Progressing, Promoting, RollingBack)
-- kstatus reads the same conditions: Healthy is Current, Progressing and Suspended are
-- InProgress, Degraded is Failed.
local hs = {}

local function condition(status, kind)
  if type(status.conditions) ~= "table" then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if type(c) == "table" and c.type == kind then
      return c
    end
  end
  return nil
end

local function is_true(c)
  return c ~= nil and c.status == "True"
end

-- The first of the values that is a non-empty string or a number, as a string.
local function first(...)
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    if v ~= nil and v ~= "" and (type(v) == "string" or type(v) == "number") then
      return tostring(v)
    end
  end
  return nil
end

local status = obj.status
if type(status) ~= "table" or first(status.phase) == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the Rewind operator to pick up the release"
  return hs
end

local metadata = obj.metadata or {}
local generation = tonumber(metadata.generation) or 0
local observed = tonumber(status.observedGeneration) or 0
if generation > observed then
  hs.status = "Progressing"
  hs.message = "Waiting for the Rewind operator to act on generation " .. tostring(generation)
    .. " (last acted on " .. tostring(observed) .. ")"
  return hs
end

local phase = first(status.phase)
local message = first(status.message, phase)

local stalled = condition(status, "Stalled")
if is_true(stalled) then
  hs.status = "Degraded"
  local reason = first(stalled.reason)
  local detail = first(stalled.message, message)
  if reason ~= nil then
    hs.message = reason .. ": " .. detail
  else
    hs.message = detail
  end
  return hs
end

if phase == "RolledBack" or phase == "Failed" then
  hs.status = "Degraded"
  hs.message = message
  return hs
end

if phase == "Paused" or phase == "AwaitingApproval" then
  hs.status = "Suspended"
  hs.message = message
  return hs
end

local reconciling = condition(status, "Reconciling")
if is_true(reconciling) then
  hs.status = "Progressing"
  hs.message = first(reconciling.message, message)
  return hs
end

local ready = condition(status, "Ready")
if is_true(ready) then
  hs.status = "Healthy"
  hs.message = message
  return hs
end

hs.status = "Progressing"
if ready ~= nil then
  hs.message = first(status.message, ready.message, phase .. ": not Ready yet")
else
  hs.message = first(status.message, phase .. ": not Ready yet")
end
return hs
