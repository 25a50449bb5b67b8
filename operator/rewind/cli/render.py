"""Terminal rendering of the views (rich): colour where the terminal supports it (and
``NO_COLOR`` is unset), the same text without styles otherwise."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from rewind.api import clip
from rewind.cli.views import duration, short_digest, threshold

#: Characters of a recent timeline entry's message the tree shows (the rest: -o json).
RECENT_WIDTH = 160

PHASE_STYLE = {
    "Promoted": "bold green",
    "Progressing": "bold cyan",
    "Promoting": "bold cyan",
    "Paused": "bold yellow",
    "AwaitingApproval": "bold yellow reverse",
    "RollingBack": "bold red",
    "RolledBack": "bold red",
    "Failed": "bold red",
    "Pending": "bold",
}
OUTCOME_STYLE = {
    "Promoted": "green",
    "Progressing": "cyan",
    "RolledBack": "red",
    "Failed": "red",
    "Superseded": "dim",
    "Retired": "dim",
}
VERDICT_STYLE = {"Pass": "green", "Fail": "bold red", "Inconclusive": "yellow"}


def _clock(text: str) -> str:
    """``03:03:22Z`` from an RFC 3339 stamp (the date is in the full JSON output)."""
    return text[11:19] + "Z" if len(text) >= 19 else text


def phase_text(phase: str) -> Text:
    return Text(phase, style=PHASE_STYLE.get(phase, "bold"))


def _revision_line(r: Mapping[str, Any]) -> Text:
    line = Text()
    line.append(f"r{r['revision']}", style="bold")
    for role in r["roles"]:
        line.append(f" {role}", style="magenta" if role != "current" else "dim")
    line.append("  ")
    line.append(r["outcome"], style=OUTCOME_STYLE.get(r["outcome"], ""))
    line.append(f"  weight {r['weight']}%", style="bold" if r["weight"] else "dim")
    if r["mirror"]:
        line.append(f"  mirror {r['mirror']}%", style="bold")
    if r["headerRoutes"]:
        line.append("  header routes", style="bold")
    pods = r.get("pods")
    if pods is None:
        line.append("  no Deployment", style="dim")
    else:
        ok = pods["desired"] > 0 and pods["ready"] >= pods["desired"]
        style = "green" if ok else "yellow" if pods["desired"] else "dim"
        line.append(f"  pods {pods['ready']}/{pods['desired']} ready", style=style)
    return line


def _revision_detail(r: Mapping[str, Any]) -> Text:
    parts = [f"model {r['modelVersion'] or '?'} {short_digest(r['modelDigest'])}"]
    if r["imageDigest"]:
        parts.append(f"image {short_digest(r['imageDigest'])}")
    if r["dataVersion"]:
        parts.append(f"data {r['dataVersion']}")
    parts.append(f"spec {r['specHash']}")
    return Text("  ".join(parts), style="dim")


def _measurement_line(m: Mapping[str, Any]) -> Text:
    line = Text()
    line.append(f"{m['metric']} ")
    line.append(m["valueText"] or "no data", style="bold")
    line.append(f" ({threshold(m)}) ")
    line.append(m["verdict"], style=VERDICT_STYLE.get(m["verdict"], ""))
    if m.get("message") and m["verdict"] == "Inconclusive":
        line.append(f"  {m['message']}", style="dim")
    return line


def release_tree(view: Mapping[str, Any]) -> RenderableType:
    """``kubectl rewind get``: the release as a tree."""
    title = Text()
    title.append(f"ModelRelease {view['namespace']}/{view['name']}", style="bold")
    extra = [f"model {view['model']}" if view["model"] else "",
             f"policy {view['policy']}" if view["policy"] else "", view["strategy"]]
    title.append("  (" + ", ".join(p for p in extra if p) + ")", style="dim")
    headline = Text()
    headline.append_text(phase_text(view["phase"]))
    if view["message"]:
        headline.append(f"  {view['message']}")
    tree = Tree(Group(title, headline), guide_style="dim")

    revisions = tree.add(Text("Revisions", style="bold"))
    if not view["revisions"]:
        revisions.add(Text("none yet", style="dim"))
    for r in view["revisions"]:
        revisions.add(Group(_revision_line(r), _revision_detail(r)))

    routes = view["routes"]
    split = ", ".join(f"r{w['revision']} {w['weight']}%" for w in routes["weights"]) or "no routes"
    traffic = Text()
    traffic.append("Traffic  ", style="bold")
    traffic.append(split)
    if routes["mirrorPercent"]:
        traffic.append(f"; mirror {routes['mirrorPercent']}% to r{routes['mirrorRevision']}")
    if routes["inEffect"]:
        traffic.append(f"  in effect since {_clock(routes['since'])}", style="green")
    else:
        wanted = ", ".join(f"r{w['revision']} {w['weight']}%" for w in routes["wanted"])
        traffic.append(f"  NOT in effect (wanted {wanted or 'none'})", style="bold red")
        if routes["message"]:
            traffic.append(f": {routes['message']}", style="red")
    tree.add(traffic)

    step = view["step"]
    if step is not None:
        line = Text()
        line.append(f"Step {step['index']}/{step['total']}  ", style="bold")
        line.append(step["label"])
        if view["phase"] == "AwaitingApproval":
            line.append("  held while the decision below is pending", style="yellow")
        elif not step["inEffect"]:
            line.append("  (its routes are not in effect yet: its clock has not started)",
                        style="yellow")
        elif step["manual"]:
            line.append(f"  manual gate, waiting {duration(step['elapsed'])}: ", style="yellow")
            line.append(f"kubectl rewind promote {view['name']} -n {view['namespace']}",
                        style="bold")
        elif step["duration"]:
            line.append(f"  {duration(step['elapsed'])} of {duration(step['duration'])}"
                        f" ({duration(step['remaining'])} left)")
        elif step["elapsed"] is not None:
            line.append(f"  for {duration(step['elapsed'])}")
        tree.add(line)

    analysis = view["analysis"]
    if analysis["lastRunAt"]:
        head = Text()
        head.append("Analysis  ", style="bold")
        head.append(f"last round {_clock(analysis['lastRunAt'])}")
        limit = analysis["failureLimit"]
        style = "red" if analysis["failures"] else ""
        head.append(f"  failures {analysis['failures']}" + (f"/{limit}" if limit else ""),
                    style=style)
        if analysis["inconclusive"]:
            head.append(f"  inconclusive {analysis['inconclusive']}", style="yellow")
        node = tree.add(head)
        for m in analysis["lastRound"]:
            node.add(_measurement_line(m))

    pd = view["pendingDecision"]
    if pd is not None:
        head = Text()
        head.append("Decision pending  ", style="bold yellow")
        cand, stable = view["candidateRevision"], view["stableRevision"]
        head.append(f"{pd['action']} r{cand} -> r{stable}  ")
        head.append(f"approvals {len(pd['approvals'])}/{pd['requiredApprovers']}  ",
                    style="bold")
        remaining = pd["remaining"]
        head.append(f"expires {_clock(pd['expiresAt'])}")
        if remaining is not None:
            head.append(f" (in {duration(max(0.0, remaining))}"
                        + (f", then {pd['onTimeout']}" if pd["onTimeout"] else "") + ")")
        node = tree.add(head)
        node.add(Text(f"reason: {pd['reason']}"))
        if pd["evidence"]:
            evidence = node.add(Text("evidence", style="bold"))
            for m in pd["evidence"]:
                line = _measurement_line(m)
                line.append(f"  at {_clock(m['at'])}", style="dim")
                evidence.add(line)
        for a in pd["approvals"]:
            node.add(Text(f"approved by {a['user']} at {_clock(a['at'])}", style="green"))
        cmds = node.add(Text("decide", style="bold"))
        for verb, command in pd["commands"].items():
            cmds.add(Text.assemble((f"{verb}: ", "dim"), (command, "bold")))

    conditions = Text()
    conditions.append("Conditions  ", style="bold")
    for i, c in enumerate(view["conditions"]):
        if i:
            conditions.append("  ")
        good = {"Ready": "True", "Stalled": "False", "Degraded": "False"}.get(c["type"])
        style = "" if good is None else "green" if c["status"] == good else "red"
        conditions.append(f"{c['type']}={c['status']}", style=style)
        if c["status"] == "True" and c["reason"] and c["type"] != "Ready":
            conditions.append(f" ({c['reason']})", style="dim")
    node = tree.add(conditions)
    for c in view["conditions"]:
        if c["type"] in ("Stalled", "Degraded") and c["status"] == "True" and c["message"]:
            node.add(Text(f"{c['type']}: {c['message']}", style="red"))

    unsent = [n for n in view["notifications"] if n["state"] != "Sent"]
    if unsent:
        node = tree.add(Text("Notifications not delivered", style="bold yellow"))
        for n in unsent[-5:]:
            node.add(Text(f"{n['type']} r{n['revision']} to {n['target']}: {n['state']}"
                          + (f" ({n['error']})" if n["error"] else ""), style="yellow"))

    recent = tree.add(Text("Recent", style="bold"))
    for e in view["recent"]:
        line = Text()
        line.append(f"{_clock(e['at'])} ", style="dim")
        line.append(e["type"], style="bold")
        line.append(f" r{e['revision']} ")
        line.append(clip(e["message"], RECENT_WIDTH))
        if e["user"]:
            line.append(f" (by {e['user']})", style="dim")
        recent.add(line)
    return tree


def history_table(name: str, rows: Sequence[Mapping[str, Any]]) -> Table:
    table = Table(title=f"History of {name}", title_justify="left", box=None,
                  header_style="bold", pad_edge=False)
    for column in ("REV", "OUTCOME", "MODEL", "DIGEST", "DATA", "IMAGE", "CREATED (UTC)",
                   "PROMOTED", "ENDED"):
        table.add_column(column, no_wrap=True)
    table.add_column("REASON", overflow="fold", min_width=20)
    for row in rows:
        rev = f"r{row['revision']}" + (f" ({', '.join(row['roles'])})" if row["roles"] else "")
        table.add_row(
            rev,
            Text(row["outcome"], style=OUTCOME_STYLE.get(row["outcome"], "")),
            row["modelVersion"],
            short_digest(row["modelDigest"]),
            row["dataVersion"],
            short_digest(row["imageDigest"]) if row["imageDigest"] else "",
            row["createdAt"].replace("T", " ").rstrip("Z"),
            _clock(row["promotedAt"]) if row["promotedAt"] else "",
            _clock(row["finishedAt"]) if row["finishedAt"] else "",
            row["reason"],
        )
    return table


def diff_table(view: Mapping[str, Any]) -> RenderableType:
    a, b = view["from"], view["to"]
    head = Text()
    head.append(f"{view['release']}: r{a['revision']}", style="bold")
    head.append(f" ({a['outcome'] or '?'}, spec {a['specHash'] or '?'})", style="dim")
    head.append(" -> ")
    head.append(f"r{b['revision']}", style="bold")
    head.append(f" ({b['outcome'] or '?'}, spec {b['specHash'] or '?'})", style="dim")
    if view["identical"]:
        return Group(head, Text("identical specs", style="green"))
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("FIELD")
    table.add_column(f"r{a['revision']}", overflow="fold")
    table.add_column(f"r{b['revision']}", overflow="fold")
    for c in view["changes"]:
        table.add_row(c["path"], Text(c["from"] or "(none)", style="red"),
                      Text(c["to"] or "(none)", style="green"))
    unchanged = Text("unchanged: " + ", ".join(view["unchanged"]), style="dim")
    return Group(head, table, unchanged)
