"""Gateway API router: one HTTPRoute per ModelRelease, and one InferencePool per revision
when the backends are InferencePools.

The release owns the HTTPRoute ``<release>`` (ownerReference), written by server-side apply
with Rewind's field manager like the Istio router's VirtualService. ``spec.parentRefs`` are
``spec.traffic.gatewayAPI.parentRefs``, ``spec.hostnames`` are ``spec.traffic.hosts``, and
the rules are:

* ``rewind-headers`` (only while a candidate is released and ``traffic.headerRoutes`` is
  set): one match per header route, sent to the candidate. Gateway API gives a match with
  headers precedence over the catch-all, whatever the order;
* ``rewind``: the catch-all (``PathPrefix /``), one weighted ``backendRef`` per revision with
  weight > 0, and for a shadow the ``RequestMirror`` filter with ``percent`` (standard since
  Gateway API v1.3) to the candidate's Service.

Both rules carry ``timeouts`` (``request`` from ``traffic.timeout``, ``backendRequest`` from
``traffic.gatewayAPI.backendRequestTimeout``). Backends are the per-revision Services
``<release>-r<N>`` (port: that revision's ``traffic.port``, read from its snapshot) or the
per-revision InferencePools of the same name (inference.networking.k8s.io/v1), which this
router writes before the route that needs them (make-before-break), selecting the
revision's pods on its ``serving.port``. The mirror always goes to the candidate's Service:
a shadow's answers are thrown away, so it needs no endpoint picker.

Weights in Gateway API are proportional; Rewind's always sum to 100, and a route edited to
other weights is read back as the percentages users get.

What is in effect is read back with the route's acceptance: a gateway controller writes
``status.parents[]`` for each parent, and the routes are only in effect once every parent
of the route reports ``Accepted=True`` and ``ResolvedRefs=True`` for the route's current
``metadata.generation``. Until then :class:`RouteProblem` ``NotAccepted`` (routine: the
release waits); a parent that refuses the route for a reason a human must fix
(``NotAllowedByListeners``, ``NoMatchingListenerHostname``, ``RefNotPermitted``, a backend
kind it does not support, ...) is a ``Conflict`` quoting the gateway controller.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client

from rewind.adapters import _kube
from rewind.adapters.base import (
    FIELD_MANAGER,
    MAX_DIFFERENCES,
    RELEASE_LABEL,
    REVISION_LABEL,
    AdapterError,
    Fallback,
    OwnerRef,
    OwnershipConflictError,
    RouteObservation,
    RouteProblem,
    RouteRefusedError,
    RouteState,
    release_labels,
)
from rewind.adapters.base import describe_change as _change
from rewind.adapters.base import show_value as _show
from rewind.adapters.route_index import other_spec_managers
from rewind.adapters.workloads import (
    UmbrellaService,
    primary_of,
    umbrella_conflict,
    umbrella_revision,
)
from rewind.api import GATEWAY_MAX_TIMEOUT, clip, parse_duration, workload_name

if TYPE_CHECKING:
    from rewind.adapters.httproute_index import HTTPRouteIndex
    from rewind.api import GatewayAPITraffic, GatewayParentRef, TrafficSpec

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
HTTPROUTES = "httproutes"
INFERENCE_GROUP = "inference.networking.k8s.io"
INFERENCE_VERSION = "v1"
INFERENCEPOOLS = "inferencepools"
ROUTE_RULE = "rewind"
HEADER_RULE = "rewind-headers"
CATCH_ALL = {"path": {"type": "PathPrefix", "value": "/"}}

#: Reasons a parent gives for not accepting (yet) that only need time, not a human.
TRANSIENT_REASONS = frozenset({"Pending", "BackendNotFound"})
#: Characters of a gateway controller's message quoted in a problem.
MAX_QUOTED = 300


def _check_revision(revision: int) -> None:
    if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
        raise ValueError(f"revision must be a positive int, got {revision!r}")


def validate_weights(weights: Mapping[int, int]) -> dict[int, int]:
    """The weights as a plain dict of ints 0..100 summing to exactly 100, or ValueError
    (Gateway API would take any proportion; Rewind writes percentages)."""
    checked: dict[int, int] = {}
    for revision, weight in weights.items():
        _check_revision(revision)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
            raise ValueError(
                f"weight of revision {revision} must be an int in 0..100, got {weight!r}"
            )
        checked[revision] = weight
    total = sum(checked.values())
    if total != 100:
        raise ValueError(f"weights must sum to 100, got {total} ({checked})")
    return checked


def _validate_mirror(mirror_revision: int | None, mirror_percent: int) -> int | None:
    if isinstance(mirror_percent, bool) or not isinstance(mirror_percent, int):
        raise ValueError(f"mirror_percent must be an int, got {mirror_percent!r}")
    if not 0 <= mirror_percent <= 100:
        raise ValueError(f"mirror_percent must be in 0..100, got {mirror_percent}")
    if mirror_percent == 0:
        return None
    if mirror_revision is None:
        raise ValueError(f"mirror_percent is {mirror_percent} but no mirror_revision is given")
    _check_revision(mirror_revision)
    return mirror_revision


def gateway_duration(duration: str) -> str:
    """A Rewind duration in Gateway API's form (GEP-2257: at most one each of h, m, s, ms,
    five digits at most): ``90s`` -> ``1m30s``, ``1500ms`` -> ``1s500ms``."""
    millis = round(parse_duration(duration) * 1000)
    hours, rest = divmod(millis, 3_600_000)
    if hours > 99999:
        raise ValueError(f"{duration} is longer than Gateway API's {GATEWAY_MAX_TIMEOUT}")
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    parts = [(hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _gateway_of(traffic: TrafficSpec) -> GatewayAPITraffic:
    if traffic.gateway_api is None:
        raise ValueError("spec.traffic has no gatewayAPI: the Istio router routes it")
    return traffic.gateway_api


def parent_ref(ref: GatewayParentRef) -> dict[str, Any]:
    """A parentRef as the API server stores it (group and kind written, being defaulted)."""
    out: dict[str, Any] = {"group": ref.group, "kind": ref.kind, "name": ref.name}
    if ref.namespace is not None:
        out["namespace"] = ref.namespace
    if ref.section_name is not None:
        out["sectionName"] = ref.section_name
    if ref.port is not None:
        out["port"] = ref.port
    return out


def describe_parent(ref: Mapping[str, Any], namespace: str) -> str:
    """``Gateway infra/public`` (``, listener https``, ``, port 443``) for messages."""
    kind = str(ref.get("kind") or "Gateway")
    text = f"{kind} {ref.get('namespace') or namespace}/{ref.get('name')}"
    if ref.get("sectionName"):
        text += f" (listener {ref['sectionName']})"
    if ref.get("port"):
        text += f" (port {ref['port']})"
    return text


def _same_parent(a: Mapping[str, Any], b: Mapping[str, Any], namespace: str) -> bool:
    """Two parentRefs name the same parent (defaults applied; namespace: the route's)."""

    def key(ref: Mapping[str, Any]) -> tuple[str, str, str, str, str, int]:
        return (
            str(ref.get("group", GATEWAY_GROUP)),
            str(ref.get("kind") or "Gateway"),
            str(ref.get("namespace") or namespace),
            str(ref.get("name") or ""),
            str(ref.get("sectionName") or ""),
            int(ref.get("port") or 0),
        )

    return key(a) == key(b)


def _timeouts(traffic: TrafficSpec) -> dict[str, Any]:
    timeouts: dict[str, str] = {}
    if traffic.timeout is not None:
        timeouts["request"] = gateway_duration(traffic.timeout)
    backend = _gateway_of(traffic).backend_request_timeout
    if backend is not None:
        timeouts["backendRequest"] = gateway_duration(backend)
    return {"timeouts": timeouts} if timeouts else {}


def _prefix_regex(prefix: str) -> str:
    """An RE2 expression for "starts with ``prefix``": Gateway API's header matches are
    Exact or RegularExpression only."""
    return "^" + re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", prefix) + ".*"


def _header_matches(traffic: TrafficSpec) -> list[dict[str, Any]]:
    """One match per header route (matches are ORed, headers within one ANDed)."""
    matches: list[dict[str, Any]] = []
    for group in traffic.header_routes:
        headers: list[dict[str, str]] = []
        for header in group.headers:
            if header.exact is not None:
                headers.append({"name": header.name, "type": "Exact", "value": header.exact})
            elif header.prefix is not None:
                headers.append({"name": header.name, "type": "RegularExpression",
                                "value": _prefix_regex(header.prefix)})
            elif header.regex is not None:
                headers.append({"name": header.name, "type": "RegularExpression",
                                "value": header.regex})
        matches.append({"headers": headers, **CATCH_ALL})
    return matches


def service_ref(release: str, revision: int, port: int) -> dict[str, Any]:
    """The revision's Service as a backendRef (group and kind written, being defaulted)."""
    return {"group": "", "kind": "Service", "name": workload_name(release, revision),
            "port": port}


def backend_ref(
    release: str, revision: int, traffic: TrafficSpec, ports: Mapping[int, int]
) -> dict[str, Any]:
    """The revision's backend: its InferencePool, or its Service on its own port."""
    if _gateway_of(traffic).inference_pool is not None:
        return {"group": INFERENCE_GROUP, "kind": "InferencePool",
                "name": workload_name(release, revision)}
    return service_ref(release, revision, ports.get(revision, traffic.port))


def _metadata(release: str, namespace: str, owner: OwnerRef) -> dict[str, Any]:
    return {
        "name": release,
        "namespace": namespace,
        "labels": release_labels(release),
        "ownerReferences": [owner.to_k8s()],
    }


def build_http_route(
    release: str,
    namespace: str,
    owner: OwnerRef,
    traffic: TrafficSpec,
    weights: Mapping[int, int],
    mirror_revision: int | None = None,
    mirror_percent: int = 0,
    header_revision: int | None = None,
    ports: Mapping[int, int] | None = None,
) -> dict[str, Any]:
    """The HTTPRoute that splits ``traffic.hosts`` on the parents by ``weights``.

    ``ports``: each revision's Service port (its snapshot's ``traffic.port``; missing ones
    take the current ``traffic.port``). Every field the API server would default is
    written, so the object read back equals it when nobody else touched it."""
    gateway = _gateway_of(traffic)
    checked = validate_weights(weights)
    mirror = _validate_mirror(mirror_revision, mirror_percent)
    ports = ports or {}
    options = _timeouts(traffic)
    rule: dict[str, Any] = {
        "name": ROUTE_RULE,
        "matches": [dict(CATCH_ALL)],
        "backendRefs": [
            {**backend_ref(release, revision, traffic, ports), "weight": weight}
            for revision, weight in sorted(checked.items())
            if weight > 0
        ],
        **options,
    }
    if mirror is not None:
        rule["filters"] = [{
            "type": "RequestMirror",
            "requestMirror": {
                "backendRef": service_ref(release, mirror, ports.get(mirror, traffic.port)),
                "percent": mirror_percent,
            },
        }]
    rules: list[dict[str, Any]] = []
    if header_revision is not None and traffic.header_routes:
        _check_revision(header_revision)
        rules.append({
            "name": HEADER_RULE,
            "matches": _header_matches(traffic),
            "backendRefs": [{**backend_ref(release, header_revision, traffic, ports),
                             "weight": 1}],
            **options,
        })
    rules.append(rule)
    return {
        "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
        "kind": "HTTPRoute",
        "metadata": _metadata(release, namespace, owner),
        "spec": {
            "parentRefs": [parent_ref(p) for p in gateway.parent_refs],
            "hostnames": list(dict.fromkeys(traffic.hosts)),
            "rules": rules,
        },
    }


def build_inference_pool(
    release: str,
    namespace: str,
    owner: OwnerRef,
    traffic: TrafficSpec,
    revision: int,
    target_port: int,
) -> dict[str, Any]:
    """The InferencePool ``<release>-r<N>``: revision N's pods on ``target_port`` (its
    ``serving.port``), with the endpoint picker of ``traffic.gatewayAPI.inferencePool``."""
    _check_revision(revision)
    pool = _gateway_of(traffic).inference_pool
    if pool is None:
        raise ValueError("spec.traffic.gatewayAPI has no inferencePool")
    picker = pool.endpoint_picker_ref
    ref: dict[str, Any] = {
        "group": picker.group,
        "kind": picker.kind,
        "name": f"{picker.name}-r{revision}" if picker.per_revision else picker.name,
        "failureMode": picker.failure_mode.value,
    }
    if picker.port is not None:
        ref["port"] = {"number": picker.port}
    meta = _metadata(workload_name(release, revision), namespace, owner)
    meta["labels"] = {**release_labels(release), REVISION_LABEL: str(revision)}
    return {
        "apiVersion": f"{INFERENCE_GROUP}/{INFERENCE_VERSION}",
        "kind": "InferencePool",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": {RELEASE_LABEL: release, REVISION_LABEL: str(revision)}},
            "targetPorts": [{"number": target_port}],
            "endpointPickerRef": ref,
        },
    }


_REVISION_NAME = re.compile(r"^(?P<release>.+)-r(?P<revision>[1-9][0-9]*)$")


def _revision_of(release: str, ref: Mapping[str, Any]) -> int | None:
    """The revision a backendRef names: a Service or InferencePool ``<release>-r<N>`` in
    the route's namespace; None for anything else."""
    kind = (str(ref.get("group", "")), str(ref.get("kind") or "Service"))
    if kind not in (("", "Service"), (INFERENCE_GROUP, "InferencePool")):
        return None
    if ref.get("namespace"):
        return None  # another namespace's object is never one of the release's revisions
    match = _REVISION_NAME.match(str(ref.get("name") or ""))
    if match is None or match.group("release") != release:
        return None
    return int(match.group("revision"))


def percentages(weights: Mapping[int, int]) -> dict[int, int]:
    """Gateway API's proportional weights as the percentages users get (largest
    remainder, so they sum to 100); all zero (no traffic at all) gives {}."""
    total = sum(weights.values())
    if total <= 0:
        return {}
    exact = {r: w * 100 / total for r, w in weights.items()}
    out = {r: int(v) for r, v in exact.items()}
    for r in sorted(exact, key=lambda r: (out[r] - exact[r], r))[: 100 - sum(out.values())]:
        out[r] += 1
    return out


def _rule(rules: list[Any], name: str) -> Mapping[str, Any] | None:
    return next((r for r in rules if isinstance(r, Mapping) and r.get("name") == name), None)


def parse_http_route(release: str, route: Mapping[str, Any]) -> RouteState:
    """Read weights (as percentages), the mirror and the header route back from an
    HTTPRoute written by this module. Backends that are not the release's revisions are
    ignored; a weight left out is Gateway API's default, 1; a mirror without ``percent``
    or ``fraction`` mirrors everything."""
    rules = [r for r in (route.get("spec") or {}).get("rules") or [] if isinstance(r, Mapping)]
    main = _rule(rules, ROUTE_RULE) or (rules[-1] if rules else {})
    raw: dict[int, int] = {}
    for ref in main.get("backendRefs") or []:
        revision = _revision_of(release, ref)
        if revision is not None:
            raw[revision] = raw.get(revision, 0) + int(ref.get("weight", 1))
    weights = percentages(raw)
    mirror_revision: int | None = None
    mirror_percent = 0
    for filt in main.get("filters") or []:
        if filt.get("type") != "RequestMirror":
            continue
        mirror = filt.get("requestMirror") or {}
        revision = _revision_of(release, mirror.get("backendRef") or {})
        if revision is None:
            continue
        mirror_revision = revision
        if "percent" in mirror:
            mirror_percent = int(mirror["percent"])
        elif "fraction" in mirror:
            fraction = mirror["fraction"] or {}
            denominator = int(fraction.get("denominator", 100)) or 100
            mirror_percent = round(100 * int(fraction.get("numerator", 0)) / denominator)
        else:
            mirror_percent = 100
    header_revision: int | None = None
    header = _rule(rules, HEADER_RULE)
    if header is not None:
        targets = [r for r in header.get("backendRefs") or [] if int(r.get("weight", 1)) > 0]
        if len(targets) == 1:
            header_revision = _revision_of(release, targets[0])
    return RouteState(weights, mirror_revision, mirror_percent, header_revision)


def routed_revisions(routes: RouteState) -> set[int]:
    """Every revision a route reads back as sending requests to (weights, mirror, header)."""
    routed = {r for r, w in routes.weights.items() if w > 0}
    if routes.mirror_percent and routes.mirror_revision is not None:
        routed.add(routes.mirror_revision)
    if routes.header_revision is not None:
        routed.add(routes.header_revision)
    return routed


def pool_revisions(routes: RouteState) -> set[int]:
    """Revisions whose InferencePool the route uses (the mirror goes to a Service)."""
    used = {r for r, w in routes.weights.items() if w > 0}
    if routes.header_revision is not None:
        used.add(routes.header_revision)
    return used


def _condition(conditions: Iterable[Any], kind: str) -> Mapping[str, Any] | None:
    return next(
        (c for c in conditions if isinstance(c, Mapping) and c.get("type") == kind), None
    )


def _quote(condition: Mapping[str, Any]) -> str:
    reason = str(condition.get("reason") or "")
    message = clip(" ".join(str(condition.get("message") or "").split()), MAX_QUOTED)
    return f"{reason}: {message}" if message else reason


def acceptance_problems(route: Mapping[str, Any]) -> list[RouteProblem]:
    """Whether every parent of the route has accepted its current generation, from
    ``status.parents`` as the gateway controllers write it (see the module)."""
    meta = route.get("metadata") or {}
    namespace = str(meta.get("namespace") or "")
    name = f"HTTPRoute {namespace}/{meta.get('name')}"
    generation = int(meta.get("generation") or 0)
    statuses = [s for s in (route.get("status") or {}).get("parents") or []
                if isinstance(s, Mapping)]
    waiting: list[str] = []
    refused: list[str] = []
    for ref in (route.get("spec") or {}).get("parentRefs") or []:
        parent = describe_parent(ref, namespace)
        mine = [s for s in statuses if _same_parent(s.get("parentRef") or {}, ref, namespace)]
        if not mine:
            waiting.append(f"{parent}: no status from its gateway controller yet")
            continue
        for status in mine:
            controller = str(status.get("controllerName") or "its gateway controller")
            conditions = status.get("conditions") or []
            for kind in ("Accepted", "ResolvedRefs"):
                condition = _condition(conditions, kind)
                if condition is None:
                    waiting.append(f"{parent}: {controller} has not set {kind}")
                    break
                seen = int(condition.get("observedGeneration") or 0)
                if seen != generation:
                    waiting.append(
                        f"{parent}: {controller} has not seen generation {generation} yet "
                        f"({kind} is for generation {seen})"
                    )
                    break
                if condition.get("status") == "True":
                    continue
                why = f"{parent}: {controller} says {kind}={condition.get('status')}, " + (
                    _quote(condition)
                )
                if condition.get("status") == "False" and str(
                    condition.get("reason") or ""
                ) not in TRANSIENT_REASONS:
                    refused.append(why)
                else:
                    waiting.append(why)
                break
    problems: list[RouteProblem] = []
    if refused:
        problems.append(RouteProblem(
            "Conflict",
            f"{name} is not accepted: {'; '.join(refused)}. Fix the Gateway (listeners, "
            "allowedRoutes, supported backends) or spec.traffic.gatewayAPI; the release holds "
            "until every parent accepts the route",
        ))
    if waiting:
        problems.append(RouteProblem(
            "NotAccepted", f"{name} is not accepted yet: {'; '.join(waiting)}",
            fixed_by_write=False,
        ))
    return problems


def spec_difference(expected: Mapping[str, Any], actual: Mapping[str, Any]) -> str:
    """Every spec field (top level, or in a rule) that differs from what Rewind writes,
    with the value found; empty when there is none."""
    changes: list[str] = []
    for key in sorted(set(expected) | set(actual)):
        if key != "rules" and expected.get(key) != actual.get(key):
            changes.append(_change(f"spec.{key}", expected, actual, key))
    want, got = list(expected.get("rules") or []), list(actual.get("rules") or [])
    if len(want) != len(got):
        names = [str(r.get("name", "?")) if isinstance(r, Mapping) else "?" for r in got]
        changes.append(
            f"spec.rules has {len(got)} rules ({', '.join(names)}), Rewind writes {len(want)}"
        )
    else:
        for index, (a, b) in enumerate(zip(want, got, strict=True)):
            if not isinstance(b, Mapping):
                changes.append(f"spec.rules[{index}] is {_show(b)}")
                continue
            for key in sorted(set(a) | set(b)):
                if a.get(key) != b.get(key):
                    changes.append(_change(f"spec.rules[{index}].{key}", a, b, key))
    if len(changes) > MAX_DIFFERENCES:
        changes[MAX_DIFFERENCES:] = [f"{len(changes) - MAX_DIFFERENCES} more"]
    return "; ".join(changes)


def route_problems(
    release: str,
    namespace: str,
    owner: OwnerRef,
    traffic: TrafficSpec,
    route: Mapping[str, Any],
    ports: Mapping[int, int] | None = None,
) -> list[RouteProblem]:
    """What makes a read-back HTTPRoute untrue: someone else's object of Rewind's name
    (Conflict), an edit outside Rewind (Drift: another field manager owns spec fields and
    the spec differs from what Rewind writes for the same routes), a route written for an
    earlier ``spec.traffic`` (NotAccepted), or parents that have not accepted it."""
    name = f"HTTPRoute {namespace}/{release}"
    if not owner.owns(route):
        return [RouteProblem(
            "Conflict",
            f"{name} exists and is not owned by ModelRelease {owner.name}: Rewind will not "
            "overwrite it; delete it or rename the release",
        )]
    routes = parse_http_route(release, route)
    problems: list[RouteProblem] = []
    try:
        expected = build_http_route(
            release, namespace, owner, traffic, routes.weights,
            routes.mirror_revision if routes.mirror_percent else None,
            routes.mirror_percent if routes.mirror_revision else 0,
            routes.header_revision, ports,
        )["spec"]
    except ValueError as err:
        expected = None
        detail = str(err)
    else:
        detail = spec_difference(expected, route.get("spec") or {})
    if expected is None or detail:
        others = other_spec_managers(route)
        if others or expected is None:
            by = f" by {', '.join(others)}" if others else ""
            problems.append(RouteProblem(
                "Drift",
                f"{name} was edited outside Rewind{by} ({detail}); Rewind restores it: put "
                "route options in spec.traffic (timeout, headerRoutes, gatewayAPI)",
            ))
        else:
            problems.append(RouteProblem(
                "NotAccepted",
                f"{name} was written for an earlier spec.traffic ({detail}); updating it",
            ))
        return problems  # acceptance of routes about to be rewritten says nothing
    return acceptance_problems(route)


def pool_problems(
    release: str,
    namespace: str,
    owner: OwnerRef,
    traffic: TrafficSpec,
    pools: Mapping[int, Mapping[str, Any] | None],
    target_ports: Mapping[int, int],
) -> list[RouteProblem]:
    """The InferencePools the route sends traffic to: missing (Drift: restored), someone
    else's (Conflict), or edited outside Rewind (Drift) or written for an earlier
    ``spec.traffic`` (NotAccepted)."""
    problems: list[RouteProblem] = []
    for revision, pool in sorted(pools.items()):
        name = f"InferencePool {namespace}/{workload_name(release, revision)}"
        if pool is None:
            problems.append(RouteProblem(
                "Drift", f"{name}, a backend of the route, is missing; restoring it"
            ))
            continue
        if not owner.owns(pool):
            problems.append(RouteProblem(
                "Conflict",
                f"{name} exists and is not owned by ModelRelease {owner.name}: Rewind will "
                "not overwrite it; delete it or rename the release",
            ))
            continue
        port = target_ports.get(revision)
        if port is None:
            continue
        expected = build_inference_pool(release, namespace, owner, traffic, revision, port)
        got = pool.get("spec") or {}
        if expected["spec"] != got:
            detail = "; ".join(
                _change(f"spec.{k}", expected["spec"], got, k)
                for k in sorted(set(expected["spec"]) | set(got))
                if expected["spec"].get(k) != got.get(k)
            )
            others = other_spec_managers(pool)
            if others:
                problems.append(RouteProblem(
                    "Drift",
                    f"{name} was edited outside Rewind by {', '.join(others)} ({detail}); "
                    "Rewind restores it",
                ))
            else:
                problems.append(RouteProblem(
                    "NotAccepted",
                    f"{name} was written for an earlier spec.traffic ({detail}); updating it",
                ))
    return problems


class GatewayAPIRouter:
    """Writes and reads the release's HTTPRoute (and InferencePools), and reports whether
    the gateways accepted it.

    Each revision's Service port and container port come from its snapshot (the
    ControllerRevision ``<release>-r<N>``), read once per release object and revision and
    then kept: a snapshot never changes. With an ``index`` (fed by a watch of HTTPRoutes),
    :meth:`observe_routes` also reports other HTTPRoutes that take this release's requests
    on one of its parents."""

    def __init__(
        self,
        api_client: client.ApiClient,
        *,
        field_manager: str = FIELD_MANAGER,
        request_timeout: float = 30.0,
        index: HTTPRouteIndex | None = None,
    ) -> None:
        self._api = client.CustomObjectsApi(api_client)
        self._apps = client.AppsV1Api(api_client)
        self._umbrella = UmbrellaService(
            api_client, field_manager=field_manager, request_timeout=request_timeout
        )
        self._field_manager = field_manager
        self._timeout = request_timeout
        self.index = index
        #: (namespace, release, owner uid, revision) -> (Service port, container port).
        self._ports: dict[tuple[str, str, str, int], tuple[int, int]] = {}

    # -- reads -----------------------------------------------------------------------

    async def _get(
        self, group: str, version: str, plural: str, name: str, namespace: str
    ) -> dict[str, Any] | None:
        return await _kube.get_or_none(
            self._api.get_namespaced_custom_object, group, version, namespace, plural, name,
            timeout=self._timeout,
        )

    async def _route(self, release: str, namespace: str) -> dict[str, Any] | None:
        return await self._get(GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, release, namespace)

    async def _pool(self, name: str, namespace: str) -> dict[str, Any] | None:
        return await self._get(INFERENCE_GROUP, INFERENCE_VERSION, INFERENCEPOOLS, name,
                               namespace)

    async def _revision_ports(
        self, release: str, namespace: str, owner: OwnerRef, revision: int,
        traffic: TrafficSpec,
    ) -> tuple[int, int] | None:
        """Revision N's (Service port, container port), from its snapshot; None when the
        snapshot cannot be read (the current spec's ports are used then, unremembered)."""
        key = (namespace, release, owner.uid, revision)
        if key in self._ports:
            return self._ports[key]
        from rewind.adapters.workloads import spec_from_snapshot

        try:
            snapshot = await _kube.get_or_none(
                self._apps.read_namespaced_controller_revision,
                workload_name(release, revision), namespace, timeout=self._timeout,
            )
            if snapshot is None:
                return None
            spec = spec_from_snapshot(snapshot)
        except AdapterError:
            return None
        self._ports[key] = (spec.traffic.port, spec.serving.port)
        return self._ports[key]

    async def _ports_of(
        self, release: str, namespace: str, owner: OwnerRef, revisions: Iterable[int],
        traffic: TrafficSpec,
    ) -> tuple[dict[int, int], dict[int, int]]:
        """Service ports and container ports of ``revisions`` (see _revision_ports)."""
        wanted = sorted(set(revisions))
        found = await asyncio.gather(
            *(self._revision_ports(release, namespace, owner, r, traffic) for r in wanted)
        )
        service = {r: f[0] for r, f in zip(wanted, found, strict=True) if f is not None}
        target = {r: f[1] for r, f in zip(wanted, found, strict=True) if f is not None}
        return service, target

    def forget(self, namespace: str, release: str) -> None:
        """Drop what is remembered of a release (it was deleted)."""
        for key in [k for k in self._ports if k[:2] == (namespace, release)]:
            del self._ports[key]

    # -- writes ----------------------------------------------------------------------

    async def _apply(self, group: str, version: str, plural: str, body: dict[str, Any]
                     ) -> dict[str, Any]:
        meta = body["metadata"]
        try:
            return await _kube.call(
                self._api.patch_namespaced_custom_object,
                group, version, meta["namespace"], plural, meta["name"], body,
                field_manager=self._field_manager,
                force=True,
                field_validation="Strict",
                _content_type=_kube.APPLY_PATCH,
                timeout=self._timeout,
            )
        except client.ApiException as err:
            if err.status is None or not 400 <= err.status < 500 or err.status in (408, 429):
                raise  # unreachable, overloaded: retried as any API failure
            hint = ""
            if err.status == 404:
                hint = (f" (is the {body['kind']} CRD, {plural}.{group}, installed? Rewind "
                        "needs Gateway API's standard channel, and the Inference Extension "
                        "for inferencePool)")
            raise RouteRefusedError(
                f"{body['kind']} {meta['namespace']}/{meta['name']} was refused by the API "
                f"server (HTTP {err.status}): {_kube.api_message(err)}{hint}"
            ) from err

    async def _drop_foreign_fields(
        self, body: Mapping[str, Any], stored: Mapping[str, Any]
    ) -> None:
        """Remove top-level spec fields Rewind does not write (added by hand): the apply
        only replaces its own (``parentRefs``, ``hostnames`` and ``rules`` are atomic)."""
        extra = sorted(set(stored.get("spec") or {}) - set(body["spec"]))
        if not extra:
            return
        meta = body["metadata"]
        try:
            await _kube.call(
                self._api.patch_namespaced_custom_object,
                GATEWAY_GROUP, GATEWAY_VERSION, meta["namespace"], HTTPROUTES, meta["name"],
                {"spec": dict.fromkeys(extra)},
                field_manager=self._field_manager,
                _content_type=_kube.MERGE_PATCH,
                timeout=self._timeout,
            )
        except client.ApiException as err:
            if err.status is None or not 400 <= err.status < 500 or err.status in (408, 429):
                raise
            raise RouteRefusedError(
                f"HTTPRoute {meta['namespace']}/{meta['name']}: removing "
                f"{', '.join('spec.' + k for k in extra)} was refused by the API server "
                f"(HTTP {err.status}): {_kube.api_message(err)}"
            ) from err

    @staticmethod
    def _check_owner(obj: Mapping[str, Any] | None, owner: OwnerRef) -> None:
        if obj is not None and not owner.owns(obj):
            meta = obj.get("metadata") or {}
            raise OwnershipConflictError(
                f"{obj.get('kind', 'object')} {meta.get('namespace')}/{meta.get('name')} "
                f"exists and is not owned by ModelRelease {owner.name} (uid {owner.uid}); "
                "refusing to overwrite it"
            )

    async def set_routes(
        self,
        release: str,
        namespace: str,
        owner: OwnerRef,
        traffic: TrafficSpec,
        weights: Mapping[int, int],
        mirror_revision: int | None = None,
        mirror_percent: int = 0,
        header_revision: int | None = None,
        primary_revision: int | None = None,
        fallback: Fallback | None = None,
    ) -> None:
        """Route ``weights``, the mirror and the header routes with one HTTPRoute apply,
        then point the umbrella Service at ``primary_revision`` (None: the revision with
        all the weight, else the lowest-numbered live one), as the Istio router does.

        With InferencePools, the pools of every revision the new route or the current one
        sends traffic to are applied first (make-before-break), so no request meets a
        backend that does not exist while the gateway catches up.

        A circuit breaker's ``fallback`` is refused (RouteRefusedError, nothing written):
        this router writes none (Gateway API has no standard direct response), and the
        engine never arms a breaker on a Gateway API release (``breaker_unsupported``)."""
        if fallback is not None:
            raise RouteRefusedError(
                f"HTTPRoute {namespace}/{release}: a circuit breaker's fallback "
                f"({fallback.describe()}) is not written to Gateway API routes; route the "
                "release with Istio (no spec.traffic.gatewayAPI) to use spec.breaker"
            )
        gateway = _gateway_of(traffic)
        wanted = RouteState(dict(weights), mirror_revision, mirror_percent, header_revision)
        current, current_umbrella = await asyncio.gather(
            self._route(release, namespace), self._umbrella.get(release, namespace)
        )
        self._check_owner(current, owner)
        self._check_owner(current_umbrella, owner)
        revisions = routed_revisions(wanted) | set(weights)
        service_ports, target_ports = await self._ports_of(
            release, namespace, owner, revisions, traffic
        )
        route = build_http_route(
            release, namespace, owner, traffic, weights, mirror_revision, mirror_percent,
            header_revision, service_ports,
        )
        if gateway.inference_pool is not None:
            pooled = {r for r, w in weights.items() if w > 0}
            if header_revision is not None and traffic.header_routes:
                pooled.add(header_revision)
            if current is not None:
                pooled |= pool_revisions(parse_http_route(release, current))
            more = pooled - set(target_ports)
            if more:
                _, extra = await self._ports_of(release, namespace, owner, more, traffic)
                target_ports.update(extra)
            for revision in sorted(pooled):
                name = workload_name(release, revision)
                if revision not in target_ports:
                    # Only the snapshot knows the port the revision's pods listen on.
                    raise AdapterError(
                        f"cannot write InferencePool {namespace}/{name}: the snapshot of "
                        f"r{revision} (ControllerRevision {name}) cannot be read"
                    )
                self._check_owner(await self._pool(name, namespace), owner)
                pool = build_inference_pool(
                    release, namespace, owner, traffic, revision, target_ports[revision]
                )
                await self._apply(INFERENCE_GROUP, INFERENCE_VERSION, INFERENCEPOOLS, pool)
        stored = await self._apply(GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, route)
        await self._drop_foreign_fields(route, stored)
        await self._umbrella.point(
            release, namespace, owner, traffic.port, primary_of(weights, primary_revision),
            current_umbrella,
        )

    async def get_routes(self, release: str, namespace: str) -> RouteState | None:
        """What the HTTPRoute says now; None when there is none."""
        route = await self._route(release, namespace)
        return None if route is None else parse_http_route(release, route)

    async def observe_routes(
        self, release: str, namespace: str, owner: OwnerRef, traffic: TrafficSpec
    ) -> RouteObservation:
        """The routes in effect: the HTTPRoute as the API server has it, checked against
        what Rewind writes for those same routes, against the InferencePools it needs,
        against its parents' acceptance, and against other HTTPRoutes on its parents."""
        source = f"HTTPRoute {namespace}/{release}"
        route, umbrella, conflicts = await asyncio.gather(
            self._route(release, namespace),
            self._umbrella.get(release, namespace),
            self._conflicts(release, namespace, traffic),
        )
        umbrella_problems = umbrella_conflict(release, namespace, owner, umbrella)
        primary = (
            umbrella_revision(umbrella, release)
            if umbrella is not None and not umbrella_problems
            else None
        )
        if route is None:
            return RouteObservation(
                exists=False, primary_revision=primary,
                problems=(*umbrella_problems, *conflicts), source=source,
            )
        routes = parse_http_route(release, route)
        service_ports, target_ports = await self._ports_of(
            release, namespace, owner, routed_revisions(routes), traffic
        )
        problems = route_problems(release, namespace, owner, traffic, route, service_ports)
        gateway = _gateway_of(traffic)
        if gateway.inference_pool is not None and owner.owns(route):
            used = sorted(pool_revisions(routes))
            found = await asyncio.gather(
                *(self._pool(workload_name(release, r), namespace) for r in used)
            )
            problems += pool_problems(release, namespace, owner, traffic,
                                      dict(zip(used, found, strict=True)), target_ports)
        problems += umbrella_problems + conflicts
        return RouteObservation(
            exists=True,
            weights={r: w for r, w in routes.weights.items() if w > 0},
            mirror_revision=routes.mirror_revision if routes.mirror_percent else None,
            mirror_percent=routes.mirror_percent if routes.mirror_revision else 0,
            header_revision=routes.header_revision,
            primary_revision=primary,
            problems=tuple(problems),
            source=source,
        )

    async def _conflicts(
        self, release: str, namespace: str, traffic: TrafficSpec
    ) -> list[RouteProblem]:
        """Other HTTPRoutes that take requests of this release's hosts on one of its
        parents: found in the index, then read back (the watch may lag or have missed a
        deletion)."""
        if self.index is None:
            return []
        from rewind.adapters.httproute_index import (
            RouteClaim,
            conflict_message,
            overlaps,
        )

        mine = RouteClaim.wanted(release, namespace, traffic)
        suspects = self.index.candidates(mine)
        if not suspects:
            return []
        current = await asyncio.gather(
            *(self._get(GATEWAY_GROUP, GATEWAY_VERSION, HTTPROUTES, s.name, s.namespace)
              for s in suspects)
        )
        found = []
        for suspect, obj in zip(suspects, current, strict=True):
            if obj is None:
                self.index.discard(suspect.namespace, suspect.name, suspect.version)
                continue
            found += overlaps(mine, RouteClaim.of(obj))
        return [RouteProblem("Conflict", conflict_message(found))] if found else []


if TYPE_CHECKING:
    from rewind.adapters.base import Router

    _conforms: type[Router] = GatewayAPIRouter
