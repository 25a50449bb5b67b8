-- Argo CD resource actions for rewind.dev/ModelRelease: only those the operator would act
-- on in the current phase (it ignores the others, with an ActionIgnored event).
-- Runs without the string and math libraries, like every Argo CD customization script.
local actions = {}
local status = obj.status or {}
local phase = status.phase or ""
local candidate = status.candidateRevision or 0

-- A human must decide on a proposed rollback.
if phase == "AwaitingApproval" and status.pendingDecision ~= nil then
  actions["approve-rollback"] = {["displayName"] = "Approve rollback", ["iconClass"] = "fa fa-fw fa-check"}
  actions["reject-rollback"] = {["displayName"] = "Reject rollback (resume)", ["iconClass"] = "fa fa-fw fa-times"}
end

-- Break glass: while a candidate is in flight (Promoting: traffic is moving to 100 % of it),
-- or after a promotion when an earlier known-good revision exists to go back to.
local in_flight = phase == "Progressing" or phase == "Paused" or phase == "AwaitingApproval"
  or phase == "Promoting"
local previous_good = false
if phase == "Promoted" and status.history ~= nil then
  for _, entry in ipairs(status.history) do
    if entry.promotedAt ~= nil and entry.revision ~= status.stableRevision
        and (entry.outcome == "Promoted" or entry.outcome == "Retired") then
      previous_good = true
    end
  end
end
if (in_flight and candidate > 0) or previous_good then
  actions["rollback"] = {["displayName"] = "Roll back now (break glass)", ["iconClass"] = "fa fa-fw fa-undo"}
end

-- A manual gate (canary pause with manual: true, blue-green autoSwitch: false).
if phase == "Paused" then
  actions["promote"] = {["displayName"] = "Promote (pass the manual gate)", ["iconClass"] = "fa fa-fw fa-forward"}
end

-- The revision the spec describes failed or was rolled back: start it again.
if phase == "Failed" or phase == "RolledBack" then
  local current = status.currentRevision or 0
  if status.history ~= nil then
    for _, entry in ipairs(status.history) do
      if entry.revision == current and (entry.outcome == "Failed" or entry.outcome == "RolledBack") then
        actions["retry"] = {["displayName"] = "Retry the failed revision", ["iconClass"] = "fa fa-fw fa-redo"}
      end
    end
  end
end

return actions
