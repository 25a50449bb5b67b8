"""``kubectl rewind``: see, decide, act and write up, for Rewind's ModelReleases.

Installed with the operator's Python package as ``kubectl-rewind``, so kubectl finds it as
a plugin (``kubectl rewind ...``); it also runs on its own. Argument parsing is click's,
terminal output rich's.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown
from rich.text import Text

from rewind.api import (
    ANNOTATION_APPROVE_ROLLBACK,
    ANNOTATION_PROMOTE,
    ANNOTATION_REJECT_ROLLBACK,
    ANNOTATION_RETRY,
    ANNOTATION_ROLLBACK,
    MAX_HUMAN_TEXT,
    ModelReleaseStatus,
    TimelineEntry,
    clip,
)
from rewind.cli import kube, render, report, views
from rewind.cli.kube import (
    EXIT_ERROR,
    EXIT_NOT_ACTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    CliError,
    Cluster,
)

EXIT_CODES = f"""\b
Exit codes:
  {EXIT_OK}  done (an action: the operator acted on it)
  {EXIT_ERROR}  the API server could not be reached or answered unexpectedly
  2  bad arguments
  {EXIT_NOT_FOUND}  no such ModelRelease or revision
  {EXIT_REFUSED}  refused by RBAC or by Rewind's admission policy (you lack the verb)
  {EXIT_NOT_ACTED}  the operator did not act: nothing to act on (it says why)
  {EXIT_TIMEOUT}  the operator did not answer in time (the annotation stays and acts later)
"""

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Options:
    kubeconfig: str | None
    context: str | None
    namespace: str | None
    output: str
    color: bool | None

    def console(self, stderr: bool = False, soft_wrap: bool = False) -> Console:
        """``soft_wrap``: lines are not broken by rich (the terminal wraps them), so a
        command in a message stays one line for copy-paste."""
        return Console(stderr=stderr, no_color=self.color is False or None,
                       force_terminal=True if self.color else None, highlight=False,
                       soft_wrap=soft_wrap)

    def cluster(self) -> Cluster:
        return Cluster(self.kubeconfig, self.context, self.namespace)


def common(output: bool = False) -> Callable[[F], F]:
    """The kubeconfig options every command takes (kubectl passes a plugin its arguments
    untouched, so they are the plugin's own), and ``--output`` where JSON makes sense."""

    def wrap(fn: F) -> F:
        fn = click.option("--kubeconfig", envvar=None, metavar="PATH",
                          help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")(fn)
        fn = click.option("--context", metavar="NAME", help="kubeconfig context to use")(fn)
        fn = click.option("-n", "--namespace", metavar="NS",
                          help="namespace (default: the context's, else default)")(fn)
        fn = click.option("--color/--no-color", default=None,
                          help="force colour on or off (default: when the terminal has it "
                          "and NO_COLOR is unset)")(fn)
        if output:
            fn = click.option("-o", "--output", type=click.Choice(["text", "json"]),
                              default="text", show_default=True, help="output format")(fn)
        return fn

    return wrap


def _options(kwargs: dict[str, Any]) -> Options:
    return Options(kwargs.pop("kubeconfig"), kwargs.pop("context"), kwargs.pop("namespace"),
                   kwargs.pop("output", "text"), kwargs.pop("color"))


def _name(name: str) -> str:
    """``chatbot``, ``mr/chatbot`` or ``modelrelease/chatbot``."""
    kind, sep, rest = name.partition("/")
    if sep and kind.lower() in ("mr", "modelrelease", "modelreleases",
                                "modelrelease.rewind.dev", "modelreleases.rewind.dev"):
        return rest
    return name


def _revision(text: str) -> int:
    raw = text.lower().removeprefix("r")
    if not raw.isdigit() or int(raw) < 1:
        raise click.BadParameter(f"{text!r} is not a revision (r2 or 2)")
    return int(raw)


def _fail(opts: Options, err: CliError) -> NoReturn:
    console = opts.console(stderr=True, soft_wrap=True)
    console.print(Text.assemble(("error: ", "bold red"), str(err)))
    if err.hint:
        console.print(Text(err.hint, style="dim"))
    sys.exit(err.code)


def _json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False))


def _now() -> datetime:
    return datetime.now(UTC)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXIT_CODES,
)
@click.version_option(package_name="rewind-operator", prog_name="kubectl-rewind")
def cli() -> None:
    """See, decide on, act on and write up Rewind's ModelReleases.

    \b
    Examples:
      kubectl rewind get chatbot -n ml --watch      # a live view of the release
      kubectl rewind approve chatbot -n ml          # approve the pending rollback
      kubectl rewind rollback fraud -n risk --reason "PII in outputs, INC-4411"
      kubectl rewind diff fraud -n risk r2 r3       # what changed between two revisions
      kubectl rewind report chatbot -n ml > postmortem.md

    Actions write the rewind.dev/ annotation with a value used once, so each acts once,
    also where Argo CD keeps re-applying manifests; the API server records who set it.
    """


# -- get ------------------------------------------------------------------------------------


def _release_view(cluster: Cluster, name: str) -> dict[str, Any]:
    body = cluster.release(name)
    policy_name = views.Release.from_body(body).policy_name
    return views.release_view(body, cluster.policy(policy_name), cluster.deployments(name),
                              _now())


@cli.command(epilog=EXIT_CODES, short_help="A release as a (live) tree.")
@click.argument("name")
@click.option("-w", "--watch", is_flag=True, help="keep the view live until interrupted")
@click.option("--interval", type=click.FloatRange(0.2, 60), default=1.0, show_default=True,
              help="seconds between two refreshes with --watch")
@common(output=True)
def get(name: str, watch: bool, interval: float, **kwargs: Any) -> None:
    """A release as a tree: revisions (model, digests, data version, weight in effect, pods
    ready), traffic as the router reports it, the current step and its clock, the last
    analysis round, a pending decision with its evidence and approvals, conditions.

    \b
    Examples:
      kubectl rewind get chatbot -n ml
      kubectl rewind get chatbot -n ml --watch
      kubectl rewind get chatbot -n ml -o json | jq .pendingDecision
    """
    opts = _options(kwargs)
    name = _name(name)
    try:
        cluster = opts.cluster()
        if not watch:
            view = _release_view(cluster, name)
            if opts.output == "json":
                _json(view)
            else:
                opts.console().print(render.release_tree(view))
            return
        _watch(opts, cluster, name, interval)
    except CliError as err:
        _fail(opts, err)


def _watch(opts: Options, cluster: Cluster, name: str, interval: float) -> None:
    console = opts.console()
    last = ""
    try:
        if opts.output == "text" and console.is_terminal:
            with Live(console=console, auto_refresh=False, transient=False) as live:
                while True:
                    live.update(render.release_tree(_release_view(cluster, name)), refresh=True)
                    time.sleep(interval)
        while True:
            view = _release_view(cluster, name)
            key = json.dumps({k: v for k, v in view.items() if k not in ("now", "step")},
                             sort_keys=True) + json.dumps((view["step"] or {}).get("index"))
            if key != last:
                last = key
                if opts.output == "json":
                    click.echo(json.dumps(view, sort_keys=False))
                else:
                    console.rule(f"{view['now']}", style="dim")
                    console.print(render.release_tree(view))
            time.sleep(interval)
    except KeyboardInterrupt:
        return


# -- history, diff --------------------------------------------------------------------------


@cli.command(epilog=EXIT_CODES, short_help="Every revision with its outcome and times.")
@click.argument("name")
@common(output=True)
def history(name: str, **kwargs: Any) -> None:
    """Every revision of a release with its outcome and times (from the status, and from
    the records on revision snapshots for revisions the status no longer holds).

    \b
    Examples:
      kubectl rewind history fraud -n risk
      kubectl rewind history fraud -n risk -o json | jq '.[] | select(.outcome=="RolledBack")'
    """
    opts = _options(kwargs)
    name = _name(name)
    try:
        cluster = opts.cluster()
        rows = views.history_view(cluster.release(name), cluster.snapshots(name))
    except CliError as err:
        _fail(opts, err)
    if opts.output == "json":
        _json(rows)
    else:
        opts.console().print(render.history_table(name, rows))


def _diff(cluster: Cluster, name: str, a: int, b: int) -> dict[str, Any]:
    body = cluster.release(name)
    specs = []
    for rev in (a, b):
        snapshot = cluster.snapshot(name, rev)
        try:
            specs.append(views.snapshot_spec(snapshot))
        except ValueError as err:
            raise CliError(f"the snapshot of r{rev} cannot be trusted: {err}",
                           EXIT_ERROR) from err
    rows = views.history_view(body, cluster.snapshots(name))
    return views.diff_view(name, a, b, specs[0], specs[1], rows)


@cli.command(epilog=EXIT_CODES, short_help="What changed between two revisions.")
@click.argument("name")
@click.argument("rev_a", metavar="REV_A")
@click.argument("rev_b", metavar="REV_B")
@common(output=True)
def diff(name: str, rev_a: str, rev_b: str, **kwargs: Any) -> None:
    """What changed between two revisions: model (version, artifact, digest), data version
    and lineage, image, args, env, environment, serving and traffic. Read from the revision
    snapshots (ControllerRevisions <name>-r<N>), each checked against its recorded hash.

    \b
    Examples:
      kubectl rewind diff fraud -n risk r2 r3
      kubectl rewind diff fraud -n risk 2 3 -o json
    """
    opts = _options(kwargs)
    name = _name(name)
    a, b = _revision(rev_a), _revision(rev_b)
    try:
        view = _diff(opts.cluster(), name, a, b)
    except CliError as err:
        _fail(opts, err)
    if opts.output == "json":
        _json(view)
    else:
        opts.console().print(render.diff_table(view))


# -- report ---------------------------------------------------------------------------------


@cli.command("report", epilog=EXIT_CODES, short_help="A post-mortem of a revision, in Markdown.")
@click.argument("name")
@click.option("--revision", "revision_", metavar="N", default=None,
              help="the revision to write up (default: the newest rolled back or failed one, "
              "else the one in flight)")
@common()
def report_cmd(name: str, revision_: str | None, **kwargs: Any) -> None:
    """A post-mortem in Markdown: summary, durations (breach seen, decided, traffic
    reverted), decisions and who made them, evidence, what changed between the revisions,
    the timeline. Facts from the API server only, in blameless wording.

    Markdown goes to stdout as is (pipe it to a file); on a terminal it is rendered.

    \b
    Examples:
      kubectl rewind report chatbot -n ml > postmortem.md
      kubectl rewind report fraud -n risk --revision 3
    """
    opts = _options(kwargs)
    name = _name(name)
    rev = _revision(revision_) if revision_ else None
    try:
        cluster = opts.cluster()
        body = cluster.release(name)
        status = views.Release.from_body(body).status
        target = rev or report.incident_revision(status)
        if target and not any(h.revision == target for h in status.history):
            raise CliError(f"r{target} is not in the history of {name}", EXIT_NOT_FOUND)
        base = report.base_revision(status, target) if target else 0
        diff_view = None
        if base:
            try:
                diff_view = _diff(cluster, name, base, target)
            except CliError as err:
                if err.code not in (EXIT_NOT_FOUND, EXIT_ERROR):
                    raise
        text = report.report(body, target or None, diff_view, _now())
    except CliError as err:
        _fail(opts, err)
    console = opts.console()
    if console.is_terminal and opts.color is not False:
        console.print(Markdown(text))
    else:
        click.echo(text, nl=False)


# -- actions --------------------------------------------------------------------------------

ACTIONS: Mapping[str, tuple[str, str]] = {
    "approve": (ANNOTATION_APPROVE_ROLLBACK, "approve the pending rollback"),
    "reject": (ANNOTATION_REJECT_ROLLBACK, "reject the pending rollback"),
    "rollback": (ANNOTATION_ROLLBACK, "roll back now (break glass)"),
    "promote": (ANNOTATION_PROMOTE, "pass the manual gate"),
    "retry": (ANNOTATION_RETRY, "retry the failed revision"),
}
ROLES = {"approve": "rewind-approver", "reject": "rewind-approver"}


def action_value(reason: str | None, now: datetime, nonce: str | None = None) -> str:
    """A value used once: ``true-<unix time>-<random>``, or the reason with that reference
    appended (a reason acts once: the same words in a later incident must act again)."""
    ref = f"{int(now.timestamp())}-{nonce or secrets.token_hex(2)}"
    if reason is None:
        return f"true-{ref}"
    return clip(f"{reason.strip()} (ref {ref})", MAX_HUMAN_TEXT)


def _precheck(verb: str, status: ModelReleaseStatus, user: str | None) -> str | None:
    """Why an approval or rejection cannot act now (None: go ahead)."""
    if verb not in ("approve", "reject"):
        return None
    pd = status.pending_decision
    if status.phase.value != "AwaitingApproval" or pd is None:
        return f"no rollback decision is pending (phase {status.phase.value})"
    if verb == "approve" and user and any(a.user == user for a in pd.approvals):
        return (f"{user} already approved this decision "
                f"({len(pd.approvals)}/{pd.required_approvers}): another approver is needed")
    return None


def _entry_text(e: TimelineEntry) -> Text:
    line = Text()
    line.append(f"  {views.stamp(e.at)[11:19]}Z ", style="dim")
    line.append(e.type, style="bold")
    line.append(f" r{e.revision}: {e.message}")
    if e.user:
        line.append(f" (by {e.user})", style="dim")
    return line


def _act(verb: str, name: str, reason: str | None, timeout: float, wait: bool,
         force: bool, opts: Options) -> None:
    key, purpose = ACTIONS[verb]
    console = opts.console(soft_wrap=True)
    quiet = opts.output == "json"
    result: dict[str, Any] = {"action": verb, "release": name, "annotation": key}
    try:
        cluster = opts.cluster()
        result["namespace"] = cluster.namespace
        body = cluster.release(name)
        status = views.Release.from_body(body).status
        identity = cluster.whoami()
        result["actor"] = identity.username if identity else None
        if not quiet:
            if identity is not None:
                console.print(Text.assemble(
                    "Acting as ", (identity.username, "bold"),
                    (f" (groups: {', '.join(identity.groups)})" if identity.groups else "",
                     "dim"),
                    ": the name the API server records for this action"))
            else:
                console.print(Text("Could not ask the API server who you are "
                                   "(SelfSubjectReview); it records the actor itself.",
                                   style="yellow"))
        why = None if force else _precheck(verb, status, identity.username if identity else None)
        if why is not None:
            raise CliError(f"{name}: cannot {purpose}: {why}", EXIT_NOT_ACTED,
                           "nothing was written; --force writes the annotation anyway")
        value = action_value(reason, _now())
        written_at = _now()
        try:
            stored = cluster.annotate(name, {key: value})
        except CliError as err:
            if err.code == EXIT_REFUSED:
                role = ROLES.get(verb, "rewind-oncall")
                who = identity.username if identity else "<you>"
                err.hint = (f"Rewind's admission policy needs the RBAC verb {key.split('/')[1]} "
                            f"on modelreleases.rewind.dev; an admin can grant it with: "
                            f"kubectl create rolebinding {role}-{who} --clusterrole={role} "
                            f"--user={who} -n {cluster.namespace}")
            raise
        stamped = ((stored.get("metadata") or {}).get("annotations") or {}).get(f"{key}-by")
        result.update(value=value, recordedActor=stamped)
        if not quiet:
            console.print(Text.assemble("Set ", (f"{key}={value}", "bold"),
                                        f" on modelrelease/{name} -n {cluster.namespace}"))
            if stamped:
                console.print(Text.assemble("The API server recorded the actor: ",
                                            (stamped, "bold green")))
            else:
                console.print(Text("No actor was stamped: Rewind's admission policies are not "
                                   "installed, so the operator records this action without "
                                   "a name.", style="yellow"))
        if not wait:
            result["outcome"] = "written"
            if quiet:
                _json(result)
            return
        code = _await_outcome(cluster, name, key, value, written_at, timeout, console, quiet,
                              result)
    except CliError as err:
        if quiet:
            result.update(outcome="error", error=str(err), exitCode=err.code)
            _json(result)
            sys.exit(err.code)
        _fail(opts, err)
    if quiet:
        _json(result)
    sys.exit(code)


def _await_outcome(cluster: Cluster, name: str, key: str, value: str, written_at: datetime,
                   timeout: float, console: Console, quiet: bool,
                   result: dict[str, Any]) -> int:
    """Wait for the operator's answer, then follow a rollback or promotion it started until
    it settles (within the same timeout); returns the exit code."""
    deadline = time.monotonic() + timeout
    told_waiting = False
    while True:
        status = views.Release.from_body(cluster.release(name)).status
        outcome = views.action_outcome(status, key, value, written_at)
        if outcome is not None and outcome.state != "waiting":
            break
        if outcome is not None and not told_waiting and not quiet:
            told_waiting = True
            console.print(_entry_text(outcome.entries[0]))
        if time.monotonic() > deadline:
            result.update(outcome="timeout", phase=status.phase.value)
            raise CliError(
                f"the operator has not acted on {key} within {timeout:g}s (is it running? "
                f"phase {status.phase.value}: {status.message})", EXIT_TIMEOUT,
                f"the annotation stays and acts when the operator does; to withdraw it: "
                f"kubectl annotate modelrelease/{name} -n {cluster.namespace} {key}-")
        time.sleep(0.3)
    shown = {(e.at, e.type, e.message) for e in outcome.entries}
    result.update(outcome=outcome.state, target=outcome.target,
                  entries=[views._entry(e) for e in outcome.entries])
    if not quiet:
        verdict = "The operator acted" if outcome.state == "acted" else "The operator did not act"
        console.print(Text(verdict + ":", style="bold green" if outcome.state == "acted"
                           else "bold yellow"))
        for e in outcome.entries:
            console.print(_entry_text(e))
    if outcome.state != "acted":
        result["phase"] = status.phase.value
        return EXIT_NOT_ACTED
    while True:
        # The status that answered may already hold what followed (a rollback that settled
        # before this read): print its later entries before deciding whether to wait on.
        for e in status.timeline:
            if e.at is not None and e.at >= (outcome.entries[0].at or e.at) and (
                    e.at, e.type, e.message) not in shown:
                shown.add((e.at, e.type, e.message))
                result["entries"].append(views._entry(e))
                if not quiet:
                    console.print(_entry_text(e))
        if status.phase.value not in views.TRANSIENT or time.monotonic() >= deadline:
            break
        time.sleep(0.3)
        status = views.Release.from_body(cluster.release(name)).status
    result.update(phase=status.phase.value, message=status.message)
    if not quiet:
        console.print(Text.assemble("Now ", render.phase_text(status.phase.value),
                                    f": {status.message}"))
    return EXIT_OK


def _action_command(verb: str, short: str, help_text: str, examples: str,
                    needs_reason: bool) -> None:
    def command(name: str, timeout: float, no_wait: bool, force: bool,
                reason: str | None = None, **kwargs: Any) -> None:
        opts = _options(kwargs)
        if needs_reason and not (reason or "").strip():
            raise click.UsageError("--reason is required and must not be blank")
        _act(verb, _name(name), reason, timeout, not no_wait, force, opts)

    command.__doc__ = help_text + "\n\n\b\nExamples:\n" + examples
    fn: Callable[..., Any] = common(output=True)(command)
    if needs_reason:
        fn = click.option("--reason", "-r", required=True, metavar="TEXT",
                          help="why (recorded in the timeline; a reference is appended so "
                          "the same words act again in a later incident)")(fn)
    fn = click.option("--force", is_flag=True,
                      help="write the annotation even when it looks like it cannot act")(fn)
    fn = click.option("--no-wait", is_flag=True,
                      help="return once the annotation is written")(fn)
    fn = click.option("--timeout", type=click.FloatRange(1, 3600), default=60.0,
                      show_default=True, help="seconds to wait for the operator")(fn)
    fn = click.argument("name")(fn)
    cli.command(verb, epilog=EXIT_CODES, short_help=short)(fn)


_action_command(
    "approve",
    "Approve the pending rollback.",
    "Approve the pending rollback of a release (needs the approve-rollback verb, e.g. the "
    "rewind-approver ClusterRole). Each approver counts once; with requiredApprovers: 2 the "
    "rollback starts at the second distinct approval.",
    "  kubectl rewind approve chatbot -n ml\n  kubectl rewind approve chatbot -n ml -o json",
    needs_reason=False,
)
_action_command(
    "reject",
    "Reject the pending rollback: the rollout resumes.",
    "Reject the pending rollback: the rollout resumes where it was, failure counters reset "
    "(needs the reject-rollback verb).",
    "  kubectl rewind reject chatbot -n ml --reason 'load test, not users'",
    needs_reason=True,
)
_action_command(
    "rollback",
    "Break glass: roll back to the last known-good revision now.",
    "Break glass: roll back to the last known-good revision now, in any phase (needs the "
    "rollback verb, e.g. the rewind-oncall ClusterRole).",
    "  kubectl rewind rollback fraud -n risk --reason 'PII in outputs, INC-4411'",
    needs_reason=True,
)
_action_command(
    "promote",
    "Pass a manual gate (or vouch for a first release).",
    "Pass a manual gate (canary manual pause, blue-green manual switch), or vouch for a "
    "first release at its preview (needs the promote verb).",
    "  kubectl rewind promote fraud -n risk",
    needs_reason=False,
)
_action_command(
    "retry",
    "Release a failed or rolled-back revision again.",
    "Release a failed or rolled-back revision again, through the analysis (needs the retry "
    "verb).",
    "  kubectl rewind retry fraud -n risk",
    needs_reason=False,
)


def main() -> None:
    cli(prog_name="kubectl rewind")


__all__ = ["cli", "kube", "main"]
