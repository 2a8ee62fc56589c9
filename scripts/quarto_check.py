"""`make quarto-check`: render the manuscript with real Quarto and compare its text with our
builder's (analysis/paper.py), for one model's results.

    python scripts/quarto_check.py [--model smollm2-135m] [--quarto PATH]

Uses the `quarto` on PATH (or --quarto, or $QUARTO); where there is none it says so and
exits 0, skipped. Works in a temporary copy of the repository (the manuscript, the
analysis code, params.yaml, dvc.lock and the model's results), so nothing here changes:
renders HTML and typst/PDF with `quarto render paper/index.qmd -P model:<key>` (this
Python as QUARTO_PYTHON, model loading forbidden), builds the same paper with the builder,
then compares the visible text of the two HTML files (body and title block; not the table
of contents or Quarto's own labels), prints every difference, and runs analysis.numbercheck
on both. Exit status 0 when the texts agree and both pass numbercheck, 1 otherwise.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SKIP_TAGS = {"script", "style", "svg", "nav", "head", "math"}
SKIP_CLASSES = {"quarto-title-meta-heading", "quarto-other-formats-target", "quarto-alternate-formats"}
BLOCKS = {"p", "div", "li", "h1", "h2", "h3", "h4", "h5", "tr", "td", "th", "table", "section", "header", "figure",
          "figcaption", "caption", "ul", "ol", "dd", "dt", "dl", "blockquote", "pre", "main", "br"}
VOID = {"br", "img", "meta", "link", "hr", "input", "col", "source", "wbr"}


class _Text(HTMLParser):
    """The visible text, one line per block."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping: list[bool] = []

    def handle_starttag(self, tag, attrs):
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES) or dict(attrs).get("id") in ("quarto-margin-sidebar",)
        if tag not in VOID:
            self.skipping.append(skip or (bool(self.skipping) and self.skipping[-1]))
        if tag in BLOCKS:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag not in VOID and self.skipping:
            self.skipping.pop()
        if tag in BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not (self.skipping and self.skipping[-1]):
            self.parts.append(data.replace("\n", " "))


def visible_lines(html: str) -> list[str]:
    parser = _Text()
    parser.feed(html)
    return [line for line in (" ".join(raw.split()) for raw in "".join(parser.parts).splitlines()) if line]


def workspace(model: str) -> Path:
    """A temporary copy of what the paper needs: code, manuscript, params, lock, results."""
    folder = Path(tempfile.mkdtemp(prefix="quarto-check-"))
    for name in ("analysis", "paper"):
        shutil.copytree(REPO / name, folder / name, ignore=shutil.ignore_patterns("_build", ".quarto", "__pycache__"))
    for name in ("params.yaml", "dvc.lock", "dvc.yaml"):
        shutil.copy2(REPO / name, folder / name)
    shutil.copytree(REPO / "data" / model, folder / "data" / model)
    return folder


def render_with_quarto(quarto: str, folder: Path, model: str, fmt: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "QUARTO_PYTHON": sys.executable, "ARITH_FORBID_MODEL_LOAD": "1", "PYTHONPATH": str(folder)}
    return subprocess.run([quarto, "render", "paper/index.qmd", "-P", f"model:{model}", "--to", fmt], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=1200)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python scripts/quarto_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quarto", default=os.environ.get("QUARTO") or shutil.which("quarto"))
    args = parser.parse_args(argv)
    if not args.quarto or not Path(args.quarto).exists():
        print("quarto-check: skipped, Quarto is not installed here (put `quarto` on PATH, or set QUARTO=/path/to/quarto)")
        return
    if not (REPO / "data" / args.model).is_dir():
        print(f"error: data/{args.model}/ holds no results; run `make` or `make pull` first", file=sys.stderr)
        raise SystemExit(2)
    shown = subprocess.run([args.quarto, "--version"], capture_output=True, text=True).stdout
    version = re.sub(r"\x1b\[[0-9;]*m|quarto", "", shown).strip()  # it prints its name and colours
    folder = workspace(args.model)
    try:
        status = compare(args.quarto, version, folder, args.model)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    raise SystemExit(status)


def compare(quarto: str, version: str, folder: Path, model: str) -> int:
    env = {**os.environ, "PYTHONPATH": str(folder)}
    built = subprocess.run([sys.executable, "-m", "analysis.paper", "--model", model], cwd=folder, env=env,
                           capture_output=True, text=True, timeout=1200)
    if built.returncode != 0:
        print(f"error: the builder failed:\n{built.stderr}", file=sys.stderr)
        return 1
    for fmt in ("html", "typst"):
        done = render_with_quarto(quarto, folder, model, fmt)
        if done.returncode != 0:
            print(f"quarto-check: Quarto {version} failed to render {fmt}:\n{done.stderr[-4000:]}")
            return 1
        print(f"quarto-check: Quarto {version} rendered {fmt}")
    ours = visible_lines((folder / f"paper/_build/{model}/index.html").read_text())
    theirs = visible_lines((folder / "paper/_build/quarto/index.html").read_text())
    diff = list(difflib.unified_diff(ours, theirs, "builder", "quarto", lineterm="", n=0))
    print(f"quarto-check: HTML text, {len(ours)} lines (builder) against {len(theirs)} (Quarto): "
          + ("identical" if not diff else f"{sum(1 for d in diff if d[:1] in '+-' and d[:3] not in ('+++', '---'))} "
                                          "lines differ"))
    for line in diff:
        print(line)
    problems = 0
    for name, html in (("builder", f"paper/_build/{model}/index.html"), ("quarto", "paper/_build/quarto/index.html")):
        check = subprocess.run([sys.executable, "-m", "analysis.numbercheck", "--model", model, "--html", html],
                               cwd=folder, env=env, capture_output=True, text=True, timeout=300)
        print(f"quarto-check: numbercheck of the {name}'s HTML: {check.stderr.strip().rsplit(': ', 2)[-2]}")
        problems += check.returncode != 0
    pdf = folder / "paper/_build/quarto/index.pdf"
    print(f"quarto-check: Quarto's PDF: {pdf.stat().st_size:,} bytes" if pdf.exists() else "quarto-check: no PDF")
    return 1 if diff or problems or not pdf.exists() else 0


if __name__ == "__main__":
    main()
