"""The Quarto-subset builder: parsing, cross-references, inline values, rendering."""

import os
import shutil

import pytest
from helpers import REPO

from analysis import paper
from analysis.artifacts import save_json
from analysis.models import FORBID_ENV
from analysis.paper import Code, Markdown, PaperError, parse_qmd
from analysis.pipeline import paper_reads

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
    inline, _ = paper.execute(doc, "injected-model", folder)
    return doc, inline


def test_the_kernel_cannot_load_a_model_and_the_caller_is_left_as_it_was(tmp_path, monkeypatch):
    monkeypatch.delenv(FORBID_ENV, raising=False)
    before = dict(os.environ)
    data = tmp_path / "data" / "m" / "metrics"
    save_json(data / "x.json", {"name": "x", "values": [1.0]})
    source = ("```{python}\nimport os\nfrom analysis.artifacts import Schema, load_json\n"
              "class X(Schema):\n    name: str\n    values: list[float]\n"
              f"load_json({str(data / 'x.json')!r}, X)\n```\n\n"
              f"Forbidden: `{{python}} os.environ.get({FORBID_ENV!r})`.\n")
    inline, read = paper.execute(parse_qmd(source), "m", tmp_path)
    assert inline == [["1"]]
    assert read == [str((data / "x.json").resolve())]
    assert dict(os.environ) == before


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
    assert FORBID_ENV not in os.environ


def test_the_manuscript_must_read_exactly_what_dvc_yaml_lists(tmp_path):
    declared = [REPO / p for p in paper_reads("smollm2-135m")]
    paper.check_reads("smollm2-135m", [str(p) for p in declared], REPO)
    with pytest.raises(PaperError, match="never read .*sae.json"):
        paper.check_reads("smollm2-135m", [str(p) for p in declared if not p.name == "sae.json"], REPO)
    with pytest.raises(PaperError, match="read .*other.json"):
        paper.check_reads("smollm2-135m", [*map(str, declared), str(REPO / "data/smollm2-135m/other.json")], REPO)


@pytest.mark.skipif(shutil.which("quarto") is None, reason="Quarto is not installed here")
def test_quarto_itself_accepts_the_manuscript():  # pragma: no cover - only where Quarto exists
    import subprocess

    result = subprocess.run(["quarto", "inspect", "paper/index.qmd"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_abstract_takes_values_computed_after_every_cell_and_citations_resolve(tmp_path):
    from datetime import datetime, timezone

    source = ('---\ntitle: "T"\nabstract: "We found `{python} found`."\n---\n\n'
              "```{python}\n#| include: false\nfound = 6 * 7\n```\n\nAs shown before [@doe2020].\n")
    doc = parse_qmd(source)
    inline, _ = paper.execute(doc, "m", tmp_path)
    assert doc.meta["abstract"] == "We found 42."
    bib = tmp_path / "refs.bib"
    bib.write_text("@article{doe2020, author = {Doe, Jane}, title = {A Result}, journal = {J}, year = {2020}}\n")
    (tmp_path / "figures").mkdir()
    markdown = paper.assemble(doc, inline, {}, "html", tmp_path / "figures")
    html = paper.render(markdown, doc.meta, "html", tmp_path, None, datetime(2026, 1, 1, tzinfo=timezone.utc),
                        bibliography=bib).decode()
    assert "We found 42." in html and "(Doe 2020)" in html and 'id="refs"' in html and "A Result" in html
