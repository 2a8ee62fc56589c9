"""Formatting numbers and tokens for the manuscript's prose and tables.

The paper's cells call these on values read from the results files, so that every number
in the text is computed, and formatted the same way everywhere.

Strings from results files are data, not markdown: anyone who can write to the DVC remote
can write them. Markdown reaches the manuscript in one way only, as an `Md`: a string that
Quarto (and our builder) inserts as markdown because it has a markdown display
(`_repr_markdown_`); any other value is inserted as escaped plain text. Every way to make
an `Md` escapes what it is given unless that is already an `Md`: `md(template, ...)` (the
template is the manuscript's own text), `esc` (literal text), `tok` and `code` (code
spans), `url` (an https link), `md_table`, and `+` or `join` on an `Md`. So a results
string can never become HTML, an image that pandoc would embed, a link or a raw block.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable
from typing import Any


class Md(str):
    """Markdown the manuscript built from escaped parts. Quarto shows an inline value or a
    cell's result with a text/markdown representation as markdown: this is that
    representation. Concatenation and join escape any plain string they are given."""

    def _repr_markdown_(self) -> str:
        return str(self)

    def __add__(self, other: object) -> Md:
        return Md(str.__add__(self, _safe(other)))

    def __radd__(self, other: object) -> Md:
        return Md(_safe(other) + str(self))

    def join(self, parts: Iterable[object]) -> Md:
        return Md(str.join(self, (_safe(p) for p in parts)))

    def __format__(self, spec: str) -> str:
        """An f-string would turn this markdown into plain text, which Quarto escapes: refuse."""
        raise TypeError(f"report.Md {str(self)[:40]!r} in an f-string or str.format: use report.md(template, ...) "
                        "so that it stays markdown and everything else is escaped")


def _safe(value: object) -> str:
    """A plain str of markdown: an Md as it is, anything else escaped."""
    return str.__str__(value) if isinstance(value, Md) else str.__str__(esc(value))


class _Formatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        return str.__str__(value) if isinstance(value, Md) else esc(format(value, format_spec))


def md(template: str, *args: object, **kwargs: object) -> Md:
    """The manuscript's own markdown `template` (str.format syntax) with every value that
    is not an Md escaped as literal text: md("{} in {}", tok(token), label)."""
    return Md(_Formatter().vformat(template, args, kwargs))


def pct(p: float, digits: int = 1) -> str:
    """0.8392 -> '83.9%'; a minus sign for negative changes, no negative zero."""
    return num(100 * p, digits) + "%"


MINUS = "\u2212"  # the typographic minus sign, not a hyphen


def prob(p: float, sig: int = 2) -> Md:
    """A probability with `sig` significant digits; powers of ten below 0.001 (markdown
    superscript). Near 1, the distance to 1, so that 0.99996 does not print as a certain "1.0"."""
    if p == 0:
        return Md("0")
    if p >= 0.001:
        decimals = max(sig - 1 - math.floor(math.log10(abs(p))), 0)
        text = f"{p:.{decimals}f}"
        return Md(f"1 {MINUS} ") + prob(1 - p, sig) if p < 1 and float(text) >= 1 else Md(text)
    mantissa, exponent = f"{p:.{sig - 1}e}".split("e")
    return Md(f"{mantissa} × 10^{int(exponent)}^".replace("-", MINUS))


def num(x: float, digits: int = 2) -> str:
    """A signed number with a minus sign; no negative zero ("-0.00" prints as "0.00")."""
    text = f"{x:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", MINUS)


def p_number(p: float) -> str:
    """3 decimals; a control at its floor (1/1001) as 0.0010; anything smaller as < 0.001."""
    return num(p, 3) if p >= 0.001 else num(p, 4) if p >= 0.0009 else "< 0.001"


def p_text(p: float) -> str:
    """'= 0.012' or '< 0.001', to follow a 'p'."""
    shown = p_number(p)
    return shown if shown.startswith("<") else f"= {shown}"


def ci(low: float, high: float, fmt=pct) -> Md:
    """An interval: '[12.0%, 15.5%]'."""
    return md("[{}, {}]", fmt(low), fmt(high))


def quote_token(token: str) -> str:
    """A token as a readable label: quoted, with newlines visible ("' 6'")."""
    return "'" + token.replace("\n", "\\n") + "'"


def esc(text: object) -> Md:
    """Any value as literal markdown text: every ASCII punctuation character
    backslash-escaped, line breaks as spaces (an Md is returned as it is)."""
    if isinstance(text, Md):
        return text
    return Md("".join("\\" + c if c in string.punctuation else c for c in " ".join(str(text).splitlines())))


def code(text: object) -> Md:
    """A results string as one inline code span, whatever backticks it holds."""
    text = " ".join(str(text).splitlines())
    runs = [len(run) for run in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or runs else ""
    return Md(f"{fence}{pad}{text}{pad}{fence}")


def tok(token: str) -> Md:
    """A token as inline code with its quotes, so that spaces show: `' 6'`."""
    return code(quote_token(token))


def url(link: str, text: str | None = None) -> Md:
    """An https link from a results file: an autolink, or `text` linked to it; anything
    but a plain https address is shown as code, unlinked."""
    if not re.fullmatch(r"https://[A-Za-z0-9._~/-]+", link):
        return code(link) if text is None else esc(text)
    return Md(f"<{link}>") if text is None else Md("[" + str.__str__(esc(text)) + f"]({link})")


def head(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def _cell(value: object) -> str:
    """A table cell: plain values escaped; an Md's pipes escaped too (pandoc splits a pipe
    table's cells before it reads code spans, so `|` must be `\\|` even inside one)."""
    if not isinstance(value, Md):
        return esc(value)
    return re.sub(r"(?<!\\)\|", r"\\|", str(value))


def md_table(header: list[object], rows: list[list[object]], align: str | None = None,
             widths: list[int] | None = None) -> Md:
    """A pipe table in markdown; `align` is one of l, r, c per column. Cells that are not
    Md are escaped as literal text. `widths`: relative column widths, as the number of
    dashes in the rule (pandoc reads them so when a row is longer than 72 characters, and
    then spreads the table over the text width)."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = widths or [1] * len(header)
    rule = {"l": ":{}", "r": "{}:", "c": ":{}:"}
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |",
             "|" + "|".join(rule[a].format("-" * (1 + w)) for a, w in zip(align, widths, strict=True)) + "|"]
    lines += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return Md("\n".join(lines))


def bullets(items: Iterable[object]) -> Md:
    """A markdown bullet list; items that are not Md are escaped as literal text."""
    return Md("\n").join(md("- {}", item) for item in items)


def plain(text: object) -> str:
    """Markdown made by this module, as a terminal shows it: escapes and code fences removed."""
    if not isinstance(text, Md):
        return str(text)
    return re.sub(r"\\(.)|`+", lambda m: m.group(1) or "", str.__str__(text))
