"""PromQL query templates with ``{{name}}`` variables.

Kept free of pydantic and I/O so the API models, the engine and the Prometheus adapter can
all share one definition of what a valid template is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

#: Variables the operator fills in when it renders a metric query (see docs/design.md).
TEMPLATE_VARIABLES: frozenset[str] = frozenset(
    {
        "namespace",
        "release",
        "candidate",
        "stable",
        "candidateWorkload",
        "stableWorkload",
        "interval",
    }
)

#: RE2/Python regex a query matches iff every ``{{`` opens a known ``{{name}}`` (spaces inside
#: the braces allowed). The CRD checks it with CEL; it mirrors validate_template().
TEMPLATE_QUERY_PATTERN = (
    r"^([^{]|\{[^{]|\{$|\{\{ *(" + "|".join(sorted(TEMPLATE_VARIABLES)) + r") *\}\})*$"
)

#: Istio's standard metrics (istio_requests_total, istio_request_duration_milliseconds_*,
#: istio_tcp_*, ...) share this prefix; only Istio's proxies report them.
ISTIO_METRIC_PREFIX = "istio_"

# Any `{{ ... }}`, including malformed ones, so a typo is reported instead of left in PromQL.
_PLACEHOLDER = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def template_variables(template: str) -> list[str]:
    """Return the variable names a template uses, in order of first use.

    Raises ValueError on a malformed placeholder (``{{}}``, ``{{a b}}``) so it cannot reach
    Prometheus as literal text.
    """
    names: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        name = match.group(1).strip()
        if not _NAME.match(name):
            raise ValueError(
                f"malformed template placeholder {match.group(0)!r}: expected {{{{name}}}} "
                f"with one of {', '.join(sorted(TEMPLATE_VARIABLES))}"
            )
        if name not in names:
            names.append(name)
    if "{{" in _PLACEHOLDER.sub("", template):
        raise ValueError("malformed template: '{{' without a closing '}}'")
    return names


def validate_template(template: str, allowed: frozenset[str] = TEMPLATE_VARIABLES) -> None:
    """Raise ValueError naming the first variable the operator would not know how to fill."""
    for name in template_variables(template):
        if name not in allowed:
            raise ValueError(
                f"unknown template variable {{{{{name}}}}}; "
                f"known variables: {', '.join(sorted(allowed))}"
            )


def render_query(template: str, variables: Mapping[str, object]) -> str:
    """Substitute ``{{name}}`` placeholders (whitespace inside the braces is allowed).

    Every placeholder must have a value in ``variables``: an unknown name raises ValueError
    naming it, because a half-rendered PromQL query would silently measure the wrong thing.
    """
    validate_template(template, frozenset(variables))

    def substitute(match: re.Match[str]) -> str:
        return str(variables[match.group(1).strip()])

    return _PLACEHOLDER.sub(substitute, template)


def query_variables(
    *, namespace: str, release: str, candidate: int, stable: int, interval: str
) -> dict[str, str]:
    """Build the standard variable set for one analysis run of a release.

    ``interval`` is the policy's analysis interval string (e.g. ``30s``, ``1m30s``), which
    is already valid PromQL duration syntax.
    """
    return {
        "namespace": namespace,
        "release": release,
        "candidate": str(candidate),
        "stable": str(stable),
        "candidateWorkload": f"{release}-r{candidate}",
        "stableWorkload": f"{release}-r{stable}",
        "interval": interval,
    }


# PromQL's string literals ("", '' with escapes; `` raw) and comments (# to the end of the
# line), found left to right so a quote inside a comment (or a # inside a string) is theirs.
_STRING_OR_COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`|#[^\n]*')
# What the masked query keeps of a string: its index, so a __name__ matcher can read it.
_MASKED_STRING = re.compile(r"\x00([0-9]+)\x00")
# Label names, not metric names: grouping lists and the inside of label matchers.
_LABEL_LIST = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_MATCHERS = re.compile(r"\{[^{}]*\}")
_NAME_MATCHER = re.compile(r"\b__name__\s*=~?\s*\x00([0-9]+)\x00")
_METRIC_NAME = re.compile(r"(?<![A-Za-z0-9_:])[A-Za-z_:][A-Za-z0-9_:]*")


def istio_metric_names(promql: str) -> list[str]:
    """The Istio standard metrics a rendered PromQL query reads (names starting with
    ``istio_``), in order of first use, each once.

    A metric name is an identifier outside string literals, comments, label matchers
    (``{...}``) and grouping lists (``by (...)``); a ``{__name__="istio_..."}`` (or ``=~``)
    matcher counts too, with its value as written. Render the template first
    (:func:`render_query`): ``{{interval}}`` would read as a label matcher.
    """
    strings: list[str] = []

    def mask(match: re.Match[str]) -> str:
        if match.group(0).startswith("#"):
            return " "
        strings.append(match.group(0)[1:-1])
        return f"\x00{len(strings) - 1}\x00"

    masked = _STRING_OR_COMMENT.sub(mask, promql)
    found: list[tuple[int, str]] = []
    for matchers in _MATCHERS.finditer(masked):
        for index in _NAME_MATCHER.finditer(matchers.group(0)):
            found.append((matchers.start() + index.start(), strings[int(index.group(1))]))

    def blank(match: re.Match[str]) -> str:
        return " " * len(match.group(0))

    # Blanked to the same length, so positions stay comparable with the matchers'.
    code = _MASKED_STRING.sub(blank, _MATCHERS.sub(blank, _LABEL_LIST.sub(blank, masked)))
    found += [(m.start(), m.group(0)) for m in _METRIC_NAME.finditer(code)]
    names: list[str] = []
    for _, name in sorted(found):
        if name.startswith(ISTIO_METRIC_PREFIX) and name not in names:
            names.append(name)
    return names
