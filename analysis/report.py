"""Formatting numbers and tokens for the manuscript's prose and tables.

The paper's cells call these on values read from the results files, so that every number
in the text is computed, and formatted the same way everywhere.

Strings from results files are data, not markdown: anyone who can write to the DVC remote
can write them. They reach the manuscript only through `esc` (literal text), `tok` and
`code` (code spans) or `url` (an https link), so that none can become HTML, an image that
pandoc would embed, a link or a raw block.
"""

from __future__ import annotations

import math
import re
import string


def pct(p: float, digits: int = 1) -> str:
    """0.8392 -> '83.9%'; a minus sign for negative changes, no negative zero."""
    return num(100 * p, digits) + "%"


MINUS = "\u2212"  # the typographic minus sign, not a hyphen


def prob(p: float, sig: int = 2) -> str:
    """A probability with `sig` significant digits; powers of ten below 0.001. Near 1, the
    distance to 1, so that 0.99996 does not print as a certain "1.0"."""
    if p == 0:
        return "0"
    if p >= 0.001:
        decimals = max(sig - 1 - math.floor(math.log10(abs(p))), 0)
        text = f"{p:.{decimals}f}"
        return f"1 {MINUS} {prob(1 - p, sig)}" if p < 1 and float(text) >= 1 else text
    mantissa, exponent = f"{p:.{sig - 1}e}".split("e")
    return f"{mantissa} × 10^{int(exponent)}^".replace("-", MINUS)


def num(x: float, digits: int = 2) -> str:
    """A signed number with a minus sign; no negative zero ("-0.00" prints as "0.00")."""
    text = f"{x:.{digits}f}"
    if float(text) == 0:
        text = text.lstrip("-")
    return text.replace("-", MINUS)


def ci(low: float, high: float, fmt=pct) -> str:
    """An interval: '[12.0%, 15.5%]'."""
    return f"[{fmt(low)}, {fmt(high)}]"


def quote_token(token: str) -> str:
    """A token as a readable label: quoted, with newlines visible ("' 6'")."""
    return "'" + token.replace("\n", "\\n") + "'"


def esc(text: object) -> str:
    """A results string as literal markdown text: every ASCII punctuation character
    backslash-escaped, line breaks as spaces."""
    return "".join("\\" + c if c in string.punctuation else c for c in " ".join(str(text).splitlines()))


def code(text: object) -> str:
    """A results string as one inline code span, whatever backticks it holds."""
    text = " ".join(str(text).splitlines())
    runs = [len(run) for run in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or runs else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def tok(token: str) -> str:
    """A token as inline code with its quotes, so that spaces show: `' 6'`."""
    return code(quote_token(token))


def url(link: str, text: str | None = None) -> str:
    """An https link from a results file: an autolink, or `text` linked to it; anything
    but a plain https address is shown as code, unlinked."""
    if not re.fullmatch(r"https://[A-Za-z0-9._~/-]+", link):
        return code(link) if text is None else esc(text)
    return f"<{link}>" if text is None else f"[{esc(text)}]({link})"


def head(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def md_table(header: list[str], rows: list[list[object]], align: str | None = None) -> str:
    """A pipe table in markdown; `align` is one of l, r, c per column."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = {"l": ":--", "r": "--:", "c": ":-:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule[a] for a in align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
