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
-- after a promotion when an earlier known-good revision exists to go back to, when the
-- release settled on a revision that is not known-good (a roll-forward from a stalled
-- rollback, rolled back to it), and while a stalled rollback (its target never became
-- Available) has an older known-good revision to go to instead.
local in_flight = phase == "Progressing" or phase == "Paused" or phase == "AwaitingApproval"
  or phase == "Promoting"
local function known_good(entry)
  return entry.promotedAt ~= nil and (entry.outcome == "Promoted" or entry.outcome == "Retired")
end
local stable_entry = nil
if status.history ~= nil then
  for _, entry in ipairs(status.history) do
    if entry.revision == status.stableRevision then
      stable_entry = entry
    end
  end
end
local stalled_rollback = false
if phase == "RollingBack" and status.conditions ~= nil then
  for _, c in ipairs(status.conditions) do
    if c.type == "Stalled" and c.status == "True" and c.reason == "RollbackStalled" then
      stalled_rollback = true
    end
  end
end
local unproven = (phase == "RolledBack" or phase == "Failed") and stable_entry ~= nil
  and not known_good(stable_entry)
local previous_good = false
if (phase == "Promoted" or unproven or stalled_rollback) and status.history ~= nil then
  for _, entry in ipairs(status.history) do
    if known_good(entry) and entry.revision ~= status.stableRevision
        and entry.revision ~= candidate then
      local older = true
      if stalled_rollback then
        -- only a revision promoted before the target that cannot come back
        older = stable_entry ~= nil and stable_entry.promotedAt ~= nil
          and (entry.promotedAt < stable_entry.promotedAt
            or (entry.promotedAt == stable_entry.promotedAt
              and entry.revision < stable_entry.revision))
      end
      if older then
        previous_good = true
      end
    end
  end
end
if (in_flight and candidate > 0) or previous_good then
  actions["rollback"] = {["displayName"] = "Roll back now (break glass)", ["iconClass"] = "fa fa-fw fa-undo"}
end

-- A manual gate (canary pause with manual: true, blue-green autoSwitch: false), or the
-- preview of a first release (no stable revision yet, past its first stage: a human may
-- vouch for a revision no user traffic can measure yet).
local first_preview = phase == "Progressing" and (status.stableRevision or 0) == 0
  and candidate > 0 and (status.currentStep or 0) >= 1
if phase == "Paused" or first_preview then
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
