"""Which HTTPRoutes take which hostnames on which parents: Gateway API route conflicts.

Gateway API merges every HTTPRoute attached to a listener and picks, per request, the rule
with the most specific match: the longest matching exact hostname, then the longest
matching hostname, then the longest path, then method, headers and query parameters; on a
tie the oldest route (``creationTimestamp``), then ``namespace/name`` in alphabetical
order. Rewind's catch-all rule (``PathPrefix /``) is the least specific a rule can be, so:

* another route with a *more specific* rule (``/admin``, a header match) on the same host
  takes those requests on purpose: that is how routes compose, and it is not reported;
* another route whose rule is also a catch-all (``PathPrefix /``, or no match at all, with
  no method, header or query condition) takes *every* request of a host the release routes
  when its hostname is more specific for that host (``chat.example.com`` over Rewind's
  ``*.example.com``), or as specific and it wins the tie (older, or same age and first by
  name). Users then get none of the weights Rewind reports: a **conflict**.

Two routes meet on a parent when they name the same one (group, kind, namespace, name; a
missing namespace is the route's own) and their ``sectionName`` and ``port`` do not pick
different listeners (either left out, or equal). A route without hostnames takes the
listener's, and never beats a route that names the host. Not modelled: the listeners' own
hostnames (which Rewind does not read), ``allowedRoutes`` (a route the Gateway does not
admit is reported by its own status, not here), and routes in namespaces the operator does
not watch.

:class:`HTTPRouteIndex` keeps the catch-all routes seen by a watch of HTTPRoutes by
(parent, hostname), and the hostnames below each domain, so a reconcile finds the routes
that may beat the release's in a few dictionary lookups; the router reads each one back
before reporting it (the watch may lag or have missed a deletion).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rewind import API_GROUP
from rewind.adapters.base import MANAGED_BY_LABEL, MANAGED_BY_VALUE, RELEASE_LABEL
from rewind.adapters.route_index import other_spec_managers

if TYPE_CHECKING:
    from rewind.api import TrafficSpec

GATEWAY_GROUP = "gateway.networking.k8s.io"

#: (group, kind, namespace, name) of a parent.
ParentKey = tuple[str, str, str, str]
Key = tuple[str, str]  # (namespace, name) of an HTTPRoute


@dataclass(frozen=True, order=True)
class Parent:
    """A parentRef resolved in its route's namespace."""

    key: ParentKey
    section: str = ""
    port: int = 0

    @classmethod
    def of(cls, ref: Mapping[str, Any], namespace: str) -> Parent:
        return cls(
            (str(ref.get("group", GATEWAY_GROUP)), str(ref.get("kind") or "Gateway"),
             str(ref.get("namespace") or namespace), str(ref.get("name") or "")),
            str(ref.get("sectionName") or ""),
            int(ref.get("port") or 0),
        )

    def meets(self, other: Parent) -> bool:
        """The two refs may share a listener."""
        return (
            self.key == other.key
            and (not self.section or not other.section or self.section == other.section)
            and (not self.port or not other.port or self.port == other.port)
        )

    def describe(self) -> str:
        _, kind, namespace, name = self.key
        text = f"{kind} {namespace}/{name}"
        if self.section:
            text += f" (listener {self.section})"
        return text


def _is_catch_all(match: Any) -> bool:
    if not isinstance(match, Mapping):
        return False
    path = match.get("path") or {"type": "PathPrefix", "value": "/"}
    return (
        path.get("type", "PathPrefix") == "PathPrefix"
        and path.get("value", "/") == "/"
        and not match.get("headers")
        and not match.get("queryParams")
        and not match.get("method")
    )


def has_catch_all(route: Mapping[str, Any]) -> bool:
    """A rule of the route matches every request (no matches at all defaults to ``/``)."""
    rules = (route.get("spec") or {}).get("rules")
    if rules is None:
        return True  # the API server defaults a route without rules to one catch-all
    for rule in rules:
        if not isinstance(rule, Mapping):
            continue
        if not rule.get("backendRefs") and not rule.get("filters"):
            continue  # no backend: the gateway answers 500 for it, still a catch-all
        matches = rule.get("matches")
        if matches is None or any(_is_catch_all(m) for m in matches):
            return True
    return False


def rewind_release(obj: Mapping[str, Any]) -> str | None:
    """The ModelRelease an HTTPRoute belongs to, when it is one Rewind writes."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    release = labels.get(RELEASE_LABEL)
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY_VALUE or release != meta.get("name"):
        return None
    for ref in meta.get("ownerReferences") or []:
        group = str(ref.get("apiVersion", "")).split("/", 1)[0]
        if ref.get("kind") == "ModelRelease" and group == API_GROUP and ref.get("name") == release:
            return str(release)
    return None


def _status_print(obj: Mapping[str, Any]) -> str:
    """What the gateways said, compactly: a change wakes the release."""
    parents = (obj.get("status") or {}).get("parents") or []
    seen = []
    for entry in parents:
        if not isinstance(entry, Mapping):
            continue
        for c in entry.get("conditions") or []:
            if isinstance(c, Mapping):
                seen.append((str(entry.get("parentRef")), str(entry.get("controllerName")),
                             str(c.get("type")), str(c.get("status")), str(c.get("reason")),
                             str(c.get("observedGeneration"))))
    return repr(sorted(seen))


@dataclass(frozen=True)
class RouteClaim:
    """The parents and hostnames of one HTTPRoute, and whether it has a catch-all rule."""

    namespace: str
    name: str
    parents: tuple[Parent, ...]
    hostnames: tuple[str, ...]
    catch_all: bool = True
    #: creationTimestamp (RFC 3339, comparable as text); "" for a route not created yet.
    created: str = ""
    release: str | None = None
    version: str = ""
    edited: bool = False
    status: str = ""

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> RouteClaim:
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        namespace = str(meta.get("namespace") or "")
        release = rewind_release(obj)
        return cls(
            namespace=namespace,
            name=str(meta.get("name") or ""),
            parents=tuple(sorted({Parent.of(p, namespace) for p in spec.get("parentRefs") or []
                                  if isinstance(p, Mapping)})),
            hostnames=tuple(sorted({str(h).lower() for h in spec.get("hostnames") or []})),
            catch_all=has_catch_all(obj),
            created=str(meta.get("creationTimestamp") or ""),
            release=release,
            version=str(meta.get("resourceVersion") or ""),
            edited=release is not None and bool(other_spec_managers(obj)),
            status=_status_print(obj),
        )

    @classmethod
    def wanted(cls, release: str, namespace: str, traffic: TrafficSpec) -> RouteClaim:
        """What the release's own HTTPRoute claims (its catch-all rule)."""
        gateway = traffic.gateway_api
        refs = gateway.parent_refs if gateway is not None else []
        return cls(
            namespace=namespace,
            name=release,
            parents=tuple(sorted({
                Parent((p.group, p.kind, p.namespace or namespace, p.name),
                       p.section_name or "", p.port or 0)
                for p in refs
            })),
            hostnames=tuple(sorted({h.lower() for h in traffic.hosts})),
            release=release,
        )


def _wild(host: str) -> bool:
    return host.startswith("*.")


def _covers(wildcard: str, host: str) -> bool:
    """``*.example.com`` covers ``a.example.com``, ``a.b.example.com`` and
    ``*.b.example.com`` (not ``example.com``)."""
    return host.endswith(wildcard[1:]) and host != wildcard[2:]


def beats(theirs: str, mine: str) -> bool | None:
    """For the requests both hostnames match: True when ``theirs`` is more specific,
    None when equally specific, False when less (or when they share no request)."""
    if theirs == mine:
        return None
    if not _wild(mine):
        return False  # an exact name beats any wildcard; different exact names never meet
    if not _wild(theirs):
        return _covers(mine, theirs)
    return _covers(mine, theirs)  # a longer wildcard under mine is more specific


def _older(a: RouteClaim, b: RouteClaim) -> bool:
    """``a`` wins a tie against ``b``: created first, or at the same time and first by
    ``namespace/name``. A route not created yet (no timestamp) is the newest."""
    if a.created and b.created and a.created != b.created:
        return a.created < b.created
    if bool(a.created) != bool(b.created):
        return bool(a.created)
    return a.ref < b.ref


@dataclass(frozen=True, order=True)
class Overlap:
    """``other`` takes the requests of ``host`` (as ``their_host``) on ``parent``."""

    other: str
    host: str
    parent: str
    their_host: str
    why: str


def overlaps(mine: RouteClaim, other: RouteClaim) -> list[Overlap]:
    """Where ``other``'s catch-all takes requests of ``mine``'s hosts (see the module)."""
    if other.key == mine.key or not other.catch_all or not other.hostnames:
        return []
    shared = sorted({
        p for p in mine.parents if any(p.meets(q) for q in other.parents)
    })
    if not shared:
        return []
    found: dict[tuple[str, str], Overlap] = {}
    for host in mine.hostnames:
        for theirs in other.hostnames:
            verdict = beats(theirs, host)
            if verdict is False:
                continue
            if verdict is None and not _older(other, mine):
                continue
            why = ("a more specific hostname" if verdict else
                   "the same hostname and match, and it is older" if other.created != mine.created
                   else "the same hostname and match, and it sorts first by name")
            for parent in shared:
                found.setdefault((host, parent.describe()),
                                 Overlap(other.ref, host, parent.describe(), theirs, why))
    return sorted(found.values())


def _domains_above(host: str) -> list[str]:
    """The domains above every name ``host`` stands for: a.b.c -> b.c, c; *.b.c -> b.c, c."""
    labels = (host[2:] if _wild(host) else host).split(".")
    start = 0 if _wild(host) else 1
    return [".".join(labels[i:]) for i in range(start, len(labels))]


class HTTPRouteIndex:
    """Every catch-all HTTPRoute seen by the watch, by (parent, hostname) and by the
    domains above each hostname. Not thread-safe: it lives on the operator's event loop."""

    def __init__(self) -> None:
        self._claims: dict[Key, RouteClaim] = {}
        #: (parent, hostname as written) -> routes.
        self._host: defaultdict[tuple[ParentKey, str], set[Key]] = defaultdict(set)
        #: (parent, domain) -> routes with a hostname strictly below the domain.
        self._below: defaultdict[tuple[ParentKey, str], set[Key]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._claims)

    def get(self, namespace: str, name: str) -> RouteClaim | None:
        return self._claims.get((namespace, name))

    def _postings(self, claim: RouteClaim) -> Iterable[tuple[defaultdict[Any, set[Key]], Any]]:
        if not claim.catch_all:
            return
        for parent in {p.key for p in claim.parents}:
            for host in claim.hostnames:
                yield self._host, (parent, host)
                for domain in _domains_above(host):
                    yield self._below, (parent, domain)

    def _add(self, claim: RouteClaim) -> None:
        self._claims[claim.key] = claim
        for table, term in self._postings(claim):
            table[term].add(claim.key)

    def _remove(self, key: Key) -> RouteClaim | None:
        claim = self._claims.pop(key, None)
        if claim is not None:
            for table, term in self._postings(claim):
                keys = table.get(term)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del table[term]
        return claim

    def apply(self, event_type: str | None, obj: Mapping[str, Any]) -> set[Key]:
        """Take one watch event; returns the releases (namespace, name) to reconcile now:
        those whose hosts the change may concern, the owner of a Rewind HTTPRoute that
        was edited by someone else, deleted, or given a new status by a gateway, and the
        release named like an HTTPRoute that is not Rewind's."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if not all(key):
            return set()
        before = self._remove(key)
        after = None if event_type == "DELETED" else RouteClaim.of(obj)
        if after is not None:
            self._add(after)
        touched: set[Key] = set()
        for claim in (before, after):
            if claim is not None:
                touched.update(self._affected(claim))
        own = after or before
        if own is not None and own.release is not None and (
            after is None or after.edited or before is None or after.status != before.status
        ):
            touched.add((own.namespace, own.release))
        if own is not None and own.release is None:
            touched.add(key)
        return touched

    def discard(self, namespace: str, name: str, version: str) -> None:
        """Forget a route the API server says is gone, unless the watch has a newer one."""
        claim = self._claims.get((namespace, name))
        if claim is not None and claim.version == version:
            self._remove((namespace, name))

    def _near(self, parent: ParentKey, host: str) -> set[Key]:
        """Routes on ``parent`` with a hostname as or more specific than ``host``."""
        out = set(self._host.get((parent, host), set()))
        if _wild(host):
            out |= self._below.get((parent, host[2:]), set())
        return out

    def candidates(self, claim: RouteClaim) -> list[RouteClaim]:
        """Routes (not the release's own) whose catch-all may take ``claim``'s requests,
        as the index has them. ``claim`` gets its creation time from the index when its
        route is there."""
        stored = self._claims.get(claim.key)
        if stored is not None and not claim.created:
            claim = RouteClaim(claim.namespace, claim.name, claim.parents, claim.hostnames,
                               True, stored.created, claim.release)
        keys: set[Key] = set()
        for parent in {p.key for p in claim.parents}:
            for host in claim.hostnames:
                keys |= self._near(parent, host)
        keys.discard(claim.key)
        found = [self._claims[k] for k in sorted(keys)]
        return [c for c in found if overlaps(claim, c)]

    def _affected(self, changed: RouteClaim) -> set[Key]:
        """Releases whose own route the change may now beat, or no longer beat."""
        if not changed.catch_all:
            return set()
        out: set[Key] = set()
        for parent in {p.key for p in changed.parents}:
            for host in changed.hostnames:
                keys = set(self._host.get((parent, host), set()))
                for domain in _domains_above(host):
                    keys |= self._host.get((parent, "*." + domain), set())
                for key in keys:
                    claim = self._claims.get(key)
                    if claim is not None and claim.release is not None and key != changed.key:
                        out.add((claim.namespace, claim.release))
        return out


def conflict_message(found: Iterable[Overlap], limit: int = 4) -> str:
    """One sentence naming the other HTTPRoutes, the hosts, the parents and why they win."""
    by_other: dict[str, list[Overlap]] = defaultdict(list)
    for o in sorted(found):
        by_other[o.other].append(o)
    parts: list[str] = []
    for other, items in list(by_other.items())[:limit]:
        where = ", ".join(
            f"{o.host}{'' if o.their_host == o.host else f' (as {o.their_host})'} on "
            f"{o.parent}: {o.why}"
            for o in items[:limit]
        )
        more = f" and {len(items) - limit} more" if len(items) > limit else ""
        parts.append(f"{other} ({where}{more})")
    if len(by_other) > limit:
        parts.append(f"{len(by_other) - limit} more")
    noun = "HTTPRoute" if len(by_other) == 1 else "HTTPRoutes"
    verb = "takes" if len(by_other) == 1 else "take"
    return (
        f"{noun} {', '.join(parts)} {verb} every request of this release's hosts before "
        "its route (Gateway API's precedence), so users do not get the weights Rewind "
        "reports; remove the hostname or the catch-all rule from it, or delete it; the "
        "release holds until then"
    )
