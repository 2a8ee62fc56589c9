"""Every number in the rendered paper, checked against the results and params it must come from;
and the text's typography (one minus sign, no negative zero, no doubled full stop).

Not a stage: a check on the paper that `paper@<model>` built. It reads
paper/_build/<model>/index.html, data/<model>/*.json and params.yaml, and lists each
number in the paper's text that no number in those files explains at the precision shown
(as it is, as a percentage, negated, or as its distance to 1). A number typed into the
manuscript, or one computed there from nothing the results hold, shows up here.

    python -m analysis.numbercheck --model smollm2-135m   # exit 1 if any number is unexplained
    python -m analysis.numbercheck --model smollm2-135m --html paper/_build/quarto/index.html

Left out: cross-references ("Figure 3", "Table 2"), citations, the reference list, and the
appendix, whose versions and digests describe the build rather than its results. Integers
are checked like the rest, but nearly every small integer occurs somewhere in the results,
so the check has teeth for decimals and percentages.
"""

from __future__ import annotations

import bisect
import json
import math
import re
import sys
from collections.abc import Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path

import yaml

NUMBER = re.compile(r"(?<![\w.\-−])([−-]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?:e([−-]?\d+))?(?![\w])")
CROSSREF = re.compile(r"\b(?:Figures?|Tables?)\s+\d+(?:(?:,\s*|\s+and\s+)\d+)*")
SKIP_TAGS = {"script", "style", "svg", "head", "nav", "math"}
VOID_TAGS = {"br", "img", "hr", "meta", "link", "input", "col", "source", "wbr"}
INLINE_TAGS = {"a", "span", "code", "em", "strong", "sup", "sub", "i", "b", "small", "q"}  # no word break


class _Text(HTMLParser):
    """The visible text of the paper's body, without the parts the check leaves out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._stack: list[bool] = []  # per open element: is it skipped?

    def _skipped(self, tag: str, attrs: dict[str, str | None]) -> bool:
        classes = (attrs.get("class") or "").split()
        ident = attrs.get("id") or ""
        href = attrs.get("href") or ""
        return (tag in SKIP_TAGS or "citation" in classes or ident == "refs" or ident.startswith("appendix")
                or ident.startswith("references") or href.startswith(("#fig-", "#tbl-")))

    def handle_starttag(self, tag, attrs):
        if tag not in INLINE_TAGS:
            self.parts.append(" ")
        if tag not in VOID_TAGS:
            self._stack.append(self._skipped(tag, dict(attrs)) or (bool(self._stack) and self._stack[-1]))

    def handle_endtag(self, tag):
        if tag not in INLINE_TAGS:
            self.parts.append(" ")
        if self._stack and tag not in VOID_TAGS:
            self._stack.pop()

    def handle_data(self, data):
        if not (self._stack and self._stack[-1]):
            self.parts.append(data)


def paper_text(html: str) -> str:
    html = re.sub(r"\s*×\s*10<sup>([−-]?\d+)</sup>", r"e\1", html)  # report.prob's powers of ten
    parser = _Text()
    parser.feed(html)
    return CROSSREF.sub(" ", "".join(parser.parts))


def shown_numbers(text: str) -> Iterator[tuple[float, int, str]]:
    """(value, decimals shown, the text as written) of every number in the text."""
    for match in NUMBER.finditer(text):
        sign, whole, fraction, exponent = match.groups()
        value = float(whole.replace(",", "") + (fraction or ""))
        decimals = len(fraction) - 1 if fraction else 0
        if exponent:
            power = int(exponent.replace("−", "-"))
            value, decimals = value * 10.0**power, decimals - power
        yield (-value if sign else value), decimals, match.group(0)


def _leaves(value) -> Iterator[float]:
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        if math.isfinite(value):
            yield float(value)
    elif isinstance(value, str):
        yield from (v for v, _, _ in shown_numbers(value))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(key)
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)


def source_values(documents: Iterable) -> list[float]:
    """Every number the sources hold, in every form the paper may print it, sorted."""
    values = set()
    for document in documents:
        for v in _leaves(document):
            values.update((v, -v, 100 * v, -100 * v, 1 - v, 100 * (1 - v)))
    return sorted(values)


def explained(value: float, decimals: int, sources: list[float]) -> bool:
    tolerance = 0.5 * 10.0**-decimals * (1 + 1e-9) + 1e-12
    i = bisect.bisect_left(sources, value - tolerance)
    return i < len(sources) and sources[i] <= value + tolerance


def unexplained(html: str, documents: Iterable) -> list[str]:
    """The numbers of the paper's text that the documents do not explain, as written."""
    sources = source_values(documents)
    return [text for value, decimals, text in shown_numbers(paper_text(html))
            if not explained(value, decimals, sources)]


TYPOGRAPHY = {
    "a hyphen for a minus sign": re.compile(r"(?<![\w\-−])-\d"),
    "a negative zero": re.compile(r"−0(?:\.0+)?(?![.\d])"),
    "a doubled full stop": re.compile(r"(?<!\.)\.\.(?!\.)"),
}


def typography(html: str) -> list[str]:
    """The text's typographic slips: each as 'what: the text around it'."""
    text = paper_text(html)
    return [f"{what}: {text[max(m.start() - 30, 0):m.end() + 10]!r}"
            for what, pattern in TYPOGRAPHY.items() for m in pattern.finditer(text)]


def check(model: str, root: Path = Path("."), html_path: Path | None = None) -> list[str]:
    """Unexplained numbers and typographic slips of the model's built paper (or of another
    rendering of it, such as Quarto's)."""
    html = (html_path or root / "paper" / "_build" / model / "index.html").read_text()
    documents = [json.loads(p.read_text()) for p in sorted((root / "data" / model).glob("*.json"))]
    documents.append(yaml.safe_load((root / "params.yaml").read_text()))
    return [f"unexplained number: {n}" for n in unexplained(html, documents)] + typography(html)


def main(argv: list[str] | None = None) -> None:
    import argparse

    from analysis.params import exit_on_params_error, load_params

    parser = argparse.ArgumentParser(prog="python -m analysis.numbercheck", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model key from params.yaml")
    parser.add_argument("--html", type=Path, help="the HTML to check (default: paper/_build/<model>/index.html)")
    args = parser.parse_args(argv)
    with exit_on_params_error():
        load_params().model(args.model)
    html = args.html or Path("paper") / "_build" / args.model / "index.html"
    problems = check(args.model, html_path=html)
    for problem in problems:
        print(problem)
    print(f"{html}: {len(problems)} problem(s): numbers found in neither its results nor params.yaml, and "
          "typographic slips", file=sys.stderr)
    raise SystemExit(1 if problems else 0)


if __name__ == "__main__":
    main()
