"""The Quarto-subset builder: parsing, cross-references, inline values, rendering."""

import shutil

import pytest

from analysis import paper
from analysis.paper import Code, Markdown, PaperError, parse_qmd

DOC = '''---
title: "A test document"
abstract: "Short."
---

```{python}
#| tags: [parameters]
#| include: false
model = "default"
```

```{python}
#| include: false
from matplotlib.figure import Figure
from IPython.display import Markdown
values = [3, 1, 2]
```

The model is `{python} model` and the largest value is `{python} max(values)`; see @fig-line and @tbl-values.

```{python}
#| label: fig-line
#| fig-cap: "A line."
fig = Figure()
fig.subplots().plot(values)
fig
```

```{python}
#| label: tbl-values
#| tbl-cap: "The values."
Markdown("| i | v |\\n|--:|--:|\\n" + "\\n".join(f"| {i} | {v} |" for i, v in enumerate(values)))
```

```{python}
print("visible output")
```
'''


def test_parse_splits_cells_and_options():
    doc = parse_qmd(DOC)
    assert doc.meta["title"] == "A test document"
    kinds = [type(c).__name__ for c in doc.chunks]
    assert kinds.count("Code") == 5
    figure = next(c for c in doc.chunks if isinstance(c, Code) and c.options.get("label") == "fig-line")
    assert figure.options["fig-cap"] == "A line." and figure.source.startswith("fig = Figure()")
    assert any(isinstance(c, Markdown) and "@fig-line" in c.text for c in doc.chunks)


def test_unsupported_cell_options_are_rejected():
    with pytest.raises(PaperError, match=r"unsupported cell option\(s\) \['fig-width'\]"):
        parse_qmd("```{python}\n#| fig-width: 5\n1\n```\n")
    with pytest.raises(PaperError, match="never closed"):
        parse_qmd("```{python}\n1\n")


def test_unknown_cross_reference_fails():
    doc = parse_qmd("See @fig-missing.\n")
    with pytest.raises(PaperError, match="@fig-missing: no cell has this label"):
        paper.assemble(doc, [[]], {}, "html", None)


def test_email_addresses_are_not_references():
    doc = parse_qmd("Write to someone@fig-domain.org.\n")
    assert paper.assemble(doc, [[]], {}, "html", None) == "Write to someone@fig-domain.org."


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper")
    doc = parse_qmd(DOC)
    inline = paper.execute(doc, "injected-model", folder)
    return doc, inline


def test_parameters_are_injected_and_inline_values_rendered(executed, tmp_path):
    doc, inline = executed
    assert inline == [["injected-model", "3"]]
    (tmp_path / "figures").mkdir()
    markdown = paper.assemble(doc, inline, {"echo": False}, "html", tmp_path / "figures")
    assert "The model is injected-model and the largest value is 3" in markdown
    assert "[Figure 1](#fig-line)" in markdown and "[Table 1](#tbl-values)" in markdown
    assert "![Figure 1: A line.](figures/fig-line.svg){#fig-line}" in markdown
    assert ": Table 1: The values. {#tbl-values}" in markdown
    assert "visible output" in markdown and "{python}" not in markdown and "print(" not in markdown
    assert (tmp_path / "figures" / "fig-line.svg").read_text().lstrip().startswith("<?xml")


def test_typst_captions_leave_numbering_to_typst(executed, tmp_path):
    doc, inline = executed
    (tmp_path / "figures").mkdir()
    markdown = paper.assemble(doc, inline, {"echo": True}, "typst", tmp_path / "figures")
    assert "![A line.](figures/fig-line.svg){#fig-line}" in markdown
    assert "```python\nfig = Figure()" in markdown  # echo: true shows the code


def test_html_and_pdf_render_and_repeat_byte_for_byte(executed, tmp_path):
    from datetime import datetime, timezone

    doc, inline = executed
    date = datetime(2026, 1, 1, tzinfo=timezone.utc)
    outputs = []
    for run in range(2):
        built = {}
        for fmt in ("html", "typst"):
            work = tmp_path / f"{run}-{fmt}"
            (work / "figures").mkdir(parents=True)
            markdown = paper.assemble(doc, inline, {"echo": False}, fmt, work / "figures")
            built[fmt] = paper.render(markdown, doc.meta, fmt, work, None, date)
        outputs.append(built)
    html, pdf = outputs[0]["html"].decode(), outputs[0]["typst"]
    assert "<title>A test document</title>" in html and 'id="fig-line"' in html
    assert "data:image/svg+xml" in html or "<svg" in html  # the figure is embedded, not linked
    assert pdf.startswith(b"%PDF")
    assert outputs[0] == outputs[1]


def test_a_failing_cell_names_its_line(tmp_path):
    doc = parse_qmd("Text.\n\n```{python}\nraise ValueError('bad results file')\n```\n")
    with pytest.raises(PaperError, match=r"index.qmd:3: ValueError: bad results file"):
        paper.execute(doc, "m", tmp_path)


@pytest.mark.skipif(shutil.which("quarto") is None, reason="Quarto is not installed here")
def test_quarto_itself_accepts_the_manuscript():  # pragma: no cover - only where Quarto exists
    import subprocess

    result = subprocess.run(["quarto", "inspect", "paper/index.qmd"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
