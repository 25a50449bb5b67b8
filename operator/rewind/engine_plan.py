"""The release plan: every strategy flattened into one list of stages.

A RolloutPolicy's strategy (canary steps, blue-green preview/switch/post-switch, shadow
optionally followed by a canary or blue-green) becomes a tuple of :class:`Stage` records
plus a :class:`Finish`. ``status.currentStep`` is an index into that tuple, so the engine
has one explicit state machine instead of one per strategy:

========  ==========  =====================================================================
index     kind        meaning
========  ==========  =====================================================================
0         Ready       wait until the candidate's Deployment is Available (progressDeadline)
1..n      Canary      candidate at ``weight`` %; hold ``duration`` (or a manual gate)
1         Preview     blue-green: candidate at 0 % while analysis runs (previewDuration)
..        Switch      blue-green with autoSwitch false: manual gate before the switch
..        PostSwitch  blue-green: candidate at 100 %, old colour warm (postSwitchDuration)
n+1       PostPromo.  canary with postPromotionDuration: candidate at 100 %, previous stable
                      warm, analysis still running (the post-promotion watch)
1         Shadow      stable 100 %, ``mirror`` % copied to the candidate (duration)
========  ==========  =====================================================================

After the last stage passes, :class:`Finish` says what happens: ``Promote`` (the candidate
becomes stable at 100 %) or ``Stop`` (shadow ``onSuccess: Stop``: a validation run; the
candidate is retired without ever serving users). The engine first asks for the final
routes (phase Promoting) and finishes once the router reports them in effect.

A first release (no stable revision yet) has no stable revision to share traffic with or to
compare against, so its plan is different; it always finishes with Promote (even a shadow
``onSuccess: Stop``: nothing else would serve). With the policy's ``firstRelease: Promote``
it is ``(Ready,)``: all traffic once Available. With ``firstRelease: Gates`` (the default):

========  ============  ================================================================
index     kind          meaning
========  ============  ================================================================
0         Ready         wait until it is Available (progressDeadline)
1         FirstPreview  0 % of user traffic (no routes at all): reachable only at its own
                        Service ``<release>-r<N>``, for smoke tests; holds the strategy's
                        first verification window (canary: the first step's pause, or one
                        interval; blue-green: previewDuration; shadow: duration), analysed
                        with the metrics that need no ``{{stable}}``. Left out when that
                        window is 0 and no metric applies
2         FirstGate     a manual gate at 0 %, when the strategy has one anywhere (canary
                        ``pause.manual``, blue-green ``autoSwitch: false``)
========  ============  ================================================================

Canary weights, the shadow mirror and the post-switch/post-promotion watches need a stable
revision, so a first release has none of them: after its gates it takes all traffic.

A restore (the spec was reverted to a known-good revision within the policy's
``rollbackWindow``, ``status.restoring``) has the plan ``(Ready,)`` + Promote too: the
revision was verified when it was first promoted, so it takes all traffic once Available.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from rewind.api import (
    BlueGreenStrategy,
    CanaryStrategy,
    FirstRelease,
    MetricSpec,
    RolloutPolicySpec,
    ShadowAction,
    StrategyType,
    parse_duration,
    template_variables,
)

__all__ = ["Finish", "Plan", "Stage", "StageKind", "build_plan", "first_release_metrics"]

#: Template variables that name the stable revision: a first release has none.
STABLE_VARIABLES = frozenset({"stable", "stableWorkload"})


class StageKind(StrEnum):
    """What one stage of a plan does."""

    READY = "Ready"
    CANARY = "Canary"
    PREVIEW = "Preview"
    SWITCH = "Switch"
    POST_SWITCH = "PostSwitch"
    POST_PROMOTION = "PostPromotion"
    SHADOW = "Shadow"
    FIRST_PREVIEW = "FirstPreview"
    FIRST_GATE = "FirstGate"


class Finish(StrEnum):
    """What happens after the last stage passes."""

    PROMOTE = "Promote"
    STOP = "Stop"


@dataclass(frozen=True)
class Stage:
    """One stage of a release: the traffic it sets and what it waits for."""

    kind: StageKind
    strategy: StrategyType
    weight: int  # percent of live user traffic to the candidate
    mirror: int  # percent of requests mirrored to the candidate
    duration: float  # seconds the stage holds at least (0: no time gate)
    manual: bool  # waits for rewind.dev/promote
    analysed: bool  # analysis runs while the stage is active
    label: str  # for messages: "canary step 2/3 at 50%"


@dataclass(frozen=True)
class Plan:
    """Stages of a release plus what ends it."""

    stages: tuple[Stage, ...]
    finish: Finish
    warm_for: float  # seconds the replaced stable stays up after a promotion

    def stage(self, index: int) -> Stage:
        """The stage at ``index``, clamped into range.

        A policy edited mid-rollout may have fewer stages than ``status.currentStep``
        assumes; the rollout then continues at the new last stage (never skips to promote).
        """
        return self.stages[max(0, min(index, len(self.stages) - 1))]

    def is_last(self, index: int) -> bool:
        """True when ``index`` is the final stage (or beyond it)."""
        return index >= len(self.stages) - 1


def _canary(canary: CanaryStrategy, interval: float, analysed: bool) -> list[Stage]:
    stages: list[Stage] = []
    total = len(canary.steps)
    for i, step in enumerate(canary.steps):
        manual = step.pause is not None and step.pause.manual
        if step.pause is not None and step.pause.duration is not None:
            duration = parse_duration(step.pause.duration)
        elif manual:
            duration = 0.0
        else:
            duration = interval  # no pause: move on after one analysis interval
        stages.append(
            Stage(
                kind=StageKind.CANARY,
                strategy=StrategyType.CANARY,
                weight=step.weight,
                mirror=0,
                duration=duration,
                manual=manual,
                analysed=analysed,
                label=f"canary step {i + 1}/{total} at {step.weight}%",
            )
        )
    watch = parse_duration(canary.post_promotion_duration)
    if watch > 0:
        stages.append(
            Stage(
                kind=StageKind.POST_PROMOTION,
                strategy=StrategyType.CANARY,
                weight=100,
                mirror=0,
                duration=watch,
                manual=False,
                analysed=analysed,
                label="post-promotion watch at 100%",
            )
        )
    return stages


def _blue_green(bg: BlueGreenStrategy, analysed: bool) -> list[Stage]:
    stages = [
        Stage(
            kind=StageKind.PREVIEW,
            strategy=StrategyType.BLUE_GREEN,
            weight=0,
            mirror=0,
            duration=parse_duration(bg.preview_duration),
            manual=False,
            analysed=analysed,
            label="blue-green preview at 0%",
        )
    ]
    if not bg.auto_switch:
        stages.append(
            Stage(
                kind=StageKind.SWITCH,
                strategy=StrategyType.BLUE_GREEN,
                weight=0,
                mirror=0,
                duration=0.0,
                manual=True,
                analysed=analysed,
                label="blue-green waiting for the manual switch",
            )
        )
    stages.append(
        Stage(
            kind=StageKind.POST_SWITCH,
            strategy=StrategyType.BLUE_GREEN,
            weight=100,
            mirror=0,
            duration=parse_duration(bg.post_switch_duration),
            manual=False,
            analysed=analysed,
            label="blue-green post-switch at 100%",
        )
    )
    return stages


def _warm_for(policy: RolloutPolicySpec) -> float:
    """How long a replaced stable stays up: keepOldColour for blue-green, else
    keepPreviousWarm."""
    strategy = policy.strategy
    bg = strategy.blue_green
    if bg is None and strategy.shadow is not None:
        then = strategy.shadow.on_success
        bg = then.blue_green if then.action == ShadowAction.BLUE_GREEN else None
    return parse_duration(bg.keep_old_colour if bg is not None else policy.keep_previous_warm)


def first_release_metrics(policy: RolloutPolicySpec) -> list[MetricSpec]:
    """The metrics a first release is analysed with: those that do not use ``{{stable}}``
    or ``{{stableWorkload}}`` (there is no stable revision to compare with)."""
    return [
        m for m in policy.analysis.metrics
        if not STABLE_VARIABLES & set(template_variables(m.query))
    ]


def _first_release_gates(policy: RolloutPolicySpec) -> tuple[float, bool]:
    """The strategy's first verification window (seconds) and whether it has a manual gate:
    canary: its first step's pause (one analysis interval without one; none before a manual
    first step); blue-green: previewDuration; shadow: duration. A manual gate: any canary
    step with ``pause.manual``, or blue-green ``autoSwitch: false`` (also after a shadow)."""
    strategy = policy.strategy
    interval = parse_duration(policy.analysis.interval)

    def canary(c: CanaryStrategy) -> tuple[float, bool]:
        manual = any(step.pause is not None and step.pause.manual for step in c.steps)
        first = c.steps[0].pause
        if first is None:
            return interval, manual
        if first.duration is not None:
            return parse_duration(first.duration), manual
        return 0.0, manual

    if strategy.canary is not None:
        return canary(strategy.canary)
    if strategy.blue_green is not None:
        bg = strategy.blue_green
        return parse_duration(bg.preview_duration), not bg.auto_switch
    assert strategy.shadow is not None
    shadow = strategy.shadow
    then = shadow.on_success
    manual = False
    if then.action == ShadowAction.CANARY and then.canary is not None:
        manual = canary(then.canary)[1]
    elif then.action == ShadowAction.BLUE_GREEN and then.blue_green is not None:
        manual = not then.blue_green.auto_switch
    return parse_duration(shadow.duration), manual


def _first_release(policy: RolloutPolicySpec, ready: Stage) -> list[Stage]:
    """``firstRelease: Gates``: before it takes any traffic, the first revision runs at 0%
    (reachable at its own Service for smoke tests) for the strategy's first verification
    window, analysed with the metrics that need no stable, then waits at a manual gate if
    the strategy has one."""
    duration, manual = _first_release_gates(policy)
    analysed = bool(first_release_metrics(policy))
    stages = [ready]
    if duration > 0 or analysed:
        stages.append(
            Stage(
                kind=StageKind.FIRST_PREVIEW,
                strategy=ready.strategy,
                weight=0,
                mirror=0,
                duration=duration,
                manual=False,
                analysed=analysed,
                label="first release preview at 0% (no users yet)",
            )
        )
    if manual:
        stages.append(
            Stage(
                kind=StageKind.FIRST_GATE,
                strategy=ready.strategy,
                weight=0,
                mirror=0,
                duration=0.0,
                manual=True,
                analysed=False,
                label="first release waiting for the manual gate before it takes traffic",
            )
        )
    return stages


def build_plan(policy: RolloutPolicySpec, *, first_release: bool, restore: bool = False) -> Plan:
    """Flatten the policy's strategy into stages (see the module docstring)."""
    strategy = policy.strategy
    analysed = bool(policy.analysis.metrics)
    interval = parse_duration(policy.analysis.interval)
    ready = Stage(
        kind=StageKind.READY,
        strategy=strategy.kind,
        weight=0,
        mirror=0,
        duration=0.0,
        manual=False,
        analysed=False,
        label="waiting for the candidate to become Available",
    )
    warm_for = parse_duration(policy.keep_previous_warm)
    if restore:
        restoring = replace(ready, label="restoring: waiting for it to become Available")
        return Plan(stages=(restoring,), finish=Finish.PROMOTE, warm_for=_warm_for(policy))
    if first_release:
        gated = policy.first_release == FirstRelease.GATES
        first = _first_release(policy, ready) if gated else [ready]
        return Plan(stages=tuple(first), finish=Finish.PROMOTE, warm_for=warm_for)

    stages: list[Stage] = [ready]
    finish = Finish.PROMOTE
    bg: BlueGreenStrategy | None = None
    if strategy.canary is not None:
        stages += _canary(strategy.canary, interval, analysed)
    elif strategy.blue_green is not None:
        bg = strategy.blue_green
        stages += _blue_green(bg, analysed)
    elif strategy.shadow is not None:
        shadow = strategy.shadow
        stages.append(
            Stage(
                kind=StageKind.SHADOW,
                strategy=StrategyType.SHADOW,
                weight=0,
                mirror=shadow.mirror_percent,
                duration=parse_duration(shadow.duration),
                manual=False,
                analysed=analysed,
                label=f"shadow mirroring {shadow.mirror_percent}%",
            )
        )
        then = shadow.on_success
        if then.action == ShadowAction.CANARY and then.canary is not None:
            stages += _canary(then.canary, interval, analysed)
        elif then.action == ShadowAction.BLUE_GREEN and then.blue_green is not None:
            bg = then.blue_green
            stages += _blue_green(bg, analysed)
        else:
            finish = Finish.STOP
    if bg is not None:
        warm_for = parse_duration(bg.keep_old_colour)
    return Plan(stages=tuple(stages), finish=finish, warm_for=warm_for)
