"""Nothing in the project unpickles: results are safetensors and JSON."""

import re

from helpers import REPO

SOURCES = sorted((REPO / "analysis").glob("*.py")) + [REPO / "paper" / "index.qmd"]


def test_no_pickle_loading_anywhere():
    for path in SOURCES:
        text = path.read_text()
        assert not re.search(r"\bimport pickle\b|\bpickle\.load|\bjoblib\.load|allow_pickle\s*=\s*True", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"



MANUSCRIPT = sorted((REPO / "paper").rglob("*.qmd"))
LITERAL_MD = re.compile(r"""\bMd\((?!\s*(["'])[^"'\n]*\1\s*\))""")  # Md(<anything but a string literal>)


def test_markdown_reaches_the_paper_only_through_reports_escaping_functions():
    """An Md is markdown the paper inserts as it is; only analysis/report.py makes one from a
    value (escaping it). Elsewhere Md() may only wrap a literal, such as a join separator, and
    the manuscript uses no other markdown or HTML display and no `output: asis`."""
    sources = [p for p in SOURCES if p.name != "report.py"] + MANUSCRIPT
    for path in sources:
        text = path.read_text()
        assert not LITERAL_MD.search(text), f"{path}: Md() of a value; use report.md(template, ...)"
    for path in MANUSCRIPT:
        text = path.read_text()
        assert not re.search(r"\b(Markdown|HTML|Latex|display_markdown|display_html)\(", text), path
        assert "output: asis" not in text, path
        assert "{=html}" not in text and "{=typst}" not in text and "{=latex}" not in text, path
