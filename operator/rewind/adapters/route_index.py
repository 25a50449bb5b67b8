"""Which VirtualServices claim which hosts on which gateways: route conflicts, cheaply.

Istio lets any number of VirtualServices name the same host for the same gateway. For the
sidecars (``mesh``) the oldest one wins and the others are ignored; on a gateway their
routes are merged in creation order, so Rewind's catch-all route and theirs shadow one
another. Either way the mesh picks silently, and a canary can get no traffic while Rewind
reports its weight. :class:`VirtualServiceIndex` knows every VirtualService the operator
can see, so a reconcile asks it for the ones that overlap a release's routes in a few
dictionary lookups, instead of listing VirtualServices.

What counts as a conflict (Istio's rules, as istiod applies them):

* **Hosts** are resolved in the namespace of the VirtualService that names them: a name
  without a dot (``fraud``) is ``fraud.<namespace>.svc.<cluster domain>``; anything with a dot,
  ``*`` and IP addresses are taken as written. Two hosts overlap when they are equal or a
  wildcard covers the other (Istio's ``host.Name.Matches``): ``*.example.com`` overlaps
  ``fraud.example.com`` and ``*.fraud.example.com``, not ``example.com``; ``*`` overlaps
  everything. Every overlap counts: on a gateway, whether Istio merges a wildcard's routes
  into the more specific host's depends on the Gateway's own server hosts, which Rewind does
  not read.
* **Gateways** are resolved the same way: ``ns/name``; ``./name`` and ``name`` are in the
  VirtualService's namespace; the legacy ``name.ns.svc.cluster.local`` is ``ns/name``; no
  ``gateways`` at all means ``mesh``. Two VirtualServices meet only on a gateway both name.
* **exportTo** decides who sees a VirtualService: empty or ``*`` everyone (Istio's default
  ``defaultVirtualServiceExportTo``; a mesh that changed it is not modelled), ``.`` its own
  namespace, a name that namespace. For ``mesh`` the viewer is the release's namespace (its
  callers there; a VirtualService exported only to ``.`` in another namespace changes the
  routes of that namespace's callers, not ours). For a gateway the viewer is the gateway's
  namespace, standing for the namespace of the gateway's pods, which istiod uses (the same
  in the usual installation, ``istio-system/ingressgateway``).

The index is fed by a watch (see ``handlers.route_event``): Kopf lists every VirtualService
when it starts watching and then streams changes, so it fills itself after a restart. It
may be stale (a re-list after a lost watch does not replay deletions), so the router reads
each VirtualService the index names back from the API server before reporting it.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from rewind import API_GROUP
from rewind.adapters.base import (
    DEFAULT_CLUSTER_DOMAIN,
    FIELD_MANAGER,
    MANAGED_BY_LABEL,
    MANAGED_BY_VALUE,
    RELEASE_LABEL,
)

MESH = "mesh"
#: Kubernetes' default cluster domain, as in ``service_host``: short names resolve under the
#: cluster's domain (the operator's ``--cluster-domain``).
CLUSTER_DOMAIN = DEFAULT_CLUSTER_DOMAIN

Key = tuple[str, str]  # (namespace, name)


def resolve_host(host: str, namespace: str, cluster_domain: str = CLUSTER_DOMAIN) -> str:
    """A VirtualService host as istiod reads it (``ResolveShortnameToFQDN``)."""
    name = host.strip().lower()
    if name == "*" or "." in name or _is_ip(name):
        return name
    return f"{name}.{namespace}.svc.{cluster_domain}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def resolve_gateway(gateway: str, namespace: str) -> str:
    """A gateway reference as istiod reads it: ``mesh`` or ``<namespace>/<name>``."""
    ref = gateway.strip()
    if ref == MESH:
        return MESH
    if "/" in ref:
        ns, _, name = ref.partition("/")
        return f"{namespace if ns == '.' else ns}/{name}"
    if "." not in ref:
        return f"{namespace}/{ref}"
    # Legacy FQDN form: name.ns[.svc.cluster.local] -> ns/name.
    name, _, rest = ref.partition(".")
    return f"{rest.split('.', 1)[0]}/{name}"


def hosts_overlap(a: str, b: str) -> bool:
    """Istio's ``host.Name.Matches`` on resolved hosts: equal, or a wildcard covers the
    other (``*.x.com`` covers ``a.x.com``, ``a.b.x.com`` and ``*.b.x.com``; ``*`` all)."""
    a_wild, b_wild = a.startswith("*"), b.startswith("*")
    if a_wild and b_wild:
        shorter, longer = sorted((a[1:], b[1:]), key=len)
        return longer.endswith(shorter)
    if a_wild:
        return b.endswith(a[1:])
    if b_wild:
        return a.endswith(b[1:])
    return a == b


def visible_to(export_to: Iterable[str], namespace: str, viewer: str) -> bool:
    """Whether a VirtualService in ``namespace`` exported to ``export_to`` applies to
    proxies whose configuration namespace is ``viewer``."""
    targets = set(export_to)
    if not targets or "*" in targets:
        return True
    return ("." in targets and viewer == namespace) or viewer in targets


def viewer_of(gateway: str, release_namespace: str) -> str:
    """The namespace whose proxies a route on ``gateway`` is judged for (see the module)."""
    return release_namespace if gateway == MESH else gateway.split("/", 1)[0]


def other_spec_managers(obj: Mapping[str, Any]) -> list[str]:
    """Field managers other than Rewind's that own something under ``spec``."""
    names: set[str] = set()
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        manager = str(entry.get("manager") or "")
        fields = entry.get("fieldsV1") or {}
        if manager and manager != FIELD_MANAGER and "f:spec" in fields:
            names.add(manager)
    return sorted(names)


def rewind_release(obj: Mapping[str, Any]) -> str | None:
    """The ModelRelease a VirtualService belongs to, when it is one Rewind writes: labelled
    by Rewind, named after its release and owned by a ModelRelease of that name."""
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


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


@dataclass(frozen=True)
class RouteClaim:
    """The hosts and gateways one VirtualService routes, resolved, and who sees it."""

    namespace: str
    name: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...]
    export_to: tuple[str, ...] = ()
    #: The ModelRelease whose VirtualService this is (None: not one of Rewind's).
    release: str | None = None
    #: The VirtualService's resourceVersion when the claim was taken.
    version: str = ""
    #: Someone other than Rewind owns part of its spec (an edit outside Rewind).
    edited: bool = False

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def of(cls, obj: Mapping[str, Any], cluster_domain: str = CLUSTER_DOMAIN) -> RouteClaim:
        """The claim of a VirtualService as the API server returns it."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        release = rewind_release(obj)
        return cls(
            namespace=namespace,
            name=name,
            hosts=tuple(sorted(
                {resolve_host(h, namespace, cluster_domain) for h in _strings(spec.get("hosts"))}
            )),
            gateways=tuple(sorted(
                {resolve_gateway(g, namespace) for g in _strings(spec.get("gateways"))} or {MESH}
            )),
            export_to=tuple(_strings(spec.get("exportTo"))),
            release=release,
            version=str(meta.get("resourceVersion") or ""),
            edited=release is not None and bool(other_spec_managers(obj)),
        )

    @classmethod
    def wanted(
        cls,
        release: str,
        namespace: str,
        hosts: Iterable[str],
        gateways: Iterable[str],
        cluster_domain: str = CLUSTER_DOMAIN,
    ) -> RouteClaim:
        """What a release's own VirtualService claims (it is exported everywhere)."""
        return cls(
            namespace=namespace,
            name=release,
            hosts=tuple(sorted({resolve_host(h, namespace, cluster_domain) for h in hosts})),
            gateways=tuple(sorted({resolve_gateway(g, namespace) for g in gateways} or {MESH})),
            release=release,
        )


@dataclass(frozen=True, order=True)
class Overlap:
    """``other`` also routes ``host`` (as ``their_host``) on ``gateway``."""

    other: str  # namespace/name of the other VirtualService
    host: str  # the release's host
    gateway: str
    their_host: str


def overlaps(mine: RouteClaim, other: RouteClaim) -> list[Overlap]:
    """Where ``other`` competes with the release's own claim ``mine`` (exported to every
    namespace, as Rewind writes it): a shared gateway on which ``other`` is visible, and
    a host both route. Sorted, one entry per (host, gateway)."""
    if other.key == mine.key:
        return []  # the release's own VirtualService
    found: dict[tuple[str, str], Overlap] = {}
    gateways = [
        g for g in sorted(set(mine.gateways) & set(other.gateways))
        if visible_to(other.export_to, other.namespace, viewer_of(g, mine.namespace))
    ]
    if not gateways:
        return []
    for host in mine.hosts:
        for theirs in other.hosts:
            if hosts_overlap(host, theirs):
                for gateway in gateways:
                    found.setdefault((host, gateway), Overlap(other.ref, host, gateway, theirs))
    return sorted(found.values())


def _ancestors(domain: str) -> list[str]:
    """The domains strictly above ``domain``, then the root "": a.b.c -> b.c, c, ""."""
    if not domain:
        return []
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(1, len(labels))] + [""]


class VirtualServiceIndex:
    """Every VirtualService seen by the watch, indexed by the hosts it names.

    ``apply`` takes each watch event; ``candidates`` and ``conflicts`` answer for a release
    in time proportional to its hosts' labels and the answers, never to the number of
    VirtualServices. Not thread-safe: it lives on the operator's event loop.
    """

    def __init__(self, cluster_domain: str = CLUSTER_DOMAIN) -> None:
        self.cluster_domain = cluster_domain
        self._claims: dict[Key, RouteClaim] = {}
        self._exact: defaultdict[str, set[Key]] = defaultdict(set)
        #: ``*.d`` by d ("" for ``*``).
        self._wild: defaultdict[str, set[Key]] = defaultdict(set)
        #: Every host strictly below a domain (exact or wildcard), by that domain.
        self._below: defaultdict[str, set[Key]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self._claims)

    def get(self, namespace: str, name: str) -> RouteClaim | None:
        return self._claims.get((namespace, name))

    # -- updates ---------------------------------------------------------------------

    def _postings(self, host: str) -> Iterator[tuple[defaultdict[str, set[Key]], str]]:
        if host.startswith("*"):
            base = host[2:] if host.startswith("*.") else ""
            yield self._wild, base
        else:
            base = host
            yield self._exact, base
        for domain in _ancestors(base):
            yield self._below, domain

    def _add(self, claim: RouteClaim) -> None:
        self._claims[claim.key] = claim
        for host in claim.hosts:
            for table, term in self._postings(host):
                table[term].add(claim.key)

    def _remove(self, key: Key) -> RouteClaim | None:
        claim = self._claims.pop(key, None)
        if claim is not None:
            for host in claim.hosts:
                for table, term in self._postings(host):
                    keys = table.get(term)
                    if keys is not None:
                        keys.discard(key)
                        if not keys:
                            del table[term]
        return claim

    def apply(self, event_type: str | None, obj: Mapping[str, Any]) -> set[Key]:
        """Take one watch event (ADDED, MODIFIED, DELETED, or None from the initial list);
        returns the releases (namespace, name) to reconcile now: those whose routes the
        change may concern, the owner of an edited or deleted Rewind VirtualService, and
        the release named like a VirtualService that is not Rewind's (which holds that
        release while it exists)."""
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if not all(key):
            return set()
        before = self._remove(key)
        after = None if event_type == "DELETED" else RouteClaim.of(obj, self.cluster_domain)
        if after is not None:
            self._add(after)
        touched: set[Key] = set()
        for claim in (before, after):
            if claim is not None:
                touched.update(self._affected(claim))
        own = after or before
        if own is not None and own.release is not None and (after is None or after.edited):
            touched.add((own.namespace, own.release))
        if own is not None and own.release is None:
            touched.add(key)  # a release of that name waits for it to go (a Conflict)
        return touched

    def discard(self, namespace: str, name: str, version: str) -> None:
        """Forget a VirtualService the API server says is gone, unless the watch has
        brought a newer version meanwhile."""
        claim = self._claims.get((namespace, name))
        if claim is not None and claim.version == version:
            self._remove((namespace, name))

    # -- queries ---------------------------------------------------------------------

    def _near(self, host: str) -> set[Key]:
        """Keys of every VirtualService with a host that may overlap ``host``."""
        out: set[Key] = set()
        if host.startswith("*"):
            base = host[2:] if host.startswith("*.") else ""
            out |= self._below.get(base, set())
            out |= self._wild.get(base, set())
        else:
            base = host
            out |= self._exact.get(base, set())
        for domain in _ancestors(base):
            out |= self._wild.get(domain, set())
        return out

    def candidates(self, claim: RouteClaim) -> list[RouteClaim]:
        """VirtualServices (not the release's own) that share a host and a gateway with
        ``claim`` and are visible there, as the index has them."""
        keys: set[Key] = set()
        for host in claim.hosts:
            keys |= self._near(host)
        keys.discard(claim.key)
        found = [self._claims[k] for k in sorted(keys)]
        return [c for c in found if overlaps(claim, c)]

    def _affected(self, changed: RouteClaim) -> set[Key]:
        """Releases whose own VirtualService competes with ``changed``."""
        keys: set[Key] = set()
        for host in changed.hosts:
            keys |= self._near(host)
        out: set[Key] = set()
        for key in keys:
            claim = self._claims.get(key)
            if claim is None or claim.release is None or key == changed.key:
                continue
            if overlaps(claim, changed):
                out.add((claim.namespace, claim.release))
        return out


def conflict_message(overlaps_found: Iterable[Overlap], limit: int = 4) -> str:
    """One sentence naming the other VirtualServices, the hosts and the gateways."""
    by_other: dict[str, list[Overlap]] = defaultdict(list)
    for o in sorted(overlaps_found):
        by_other[o.other].append(o)
    parts: list[str] = []
    for other, found in list(by_other.items())[:limit]:
        where = ", ".join(
            f"{o.host}{'' if o.their_host == o.host else f' (as {o.their_host})'} on "
            f"{'mesh' if o.gateway == MESH else 'gateway ' + o.gateway}"
            for o in found[:limit]
        )
        more = f" and {len(found) - limit} more" if len(found) > limit else ""
        parts.append(f"{other} ({where}{more})")
    if len(by_other) > limit:
        parts.append(f"{len(by_other) - limit} more")
    noun = "VirtualService" if len(by_other) == 1 else "VirtualServices"
    verb = "routes" if len(by_other) == 1 else "route"
    return (
        f"{noun} {', '.join(parts)} also {verb} this release's hosts: Istio applies one "
        "of them, or merges them in creation order, without a word, so users may not get "
        "the weights Rewind reports; remove the host or gateway from it, restrict its "
        "exportTo, or delete it; the release holds until then"
    )
