"""The Quarto-subset builder: parsing, cross-references, inline values, rendering."""

import os
import re
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
from analysis.figurecheck import bind
fig = Figure()
fig.subplots().plot(values)
bind(fig)
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
    assert figure.options["fig-cap"] == "A line." and figure.source.startswith("from analysis.figurecheck import bind")
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
    assert inline == [["injected\\-model", "3"]]  # a string escaped as Quarto escapes it; an int as it is
    (tmp_path / "figures").mkdir()
    markdown = paper.assemble(doc, inline, {"echo": False}, "html", tmp_path / "figures")
    assert "The model is injected\\-model and the largest value is 3" in markdown
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
    assert "```python\nfrom analysis.figurecheck import bind\nfig = Figure()" in markdown  # echo: true shows the code


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
            built[fmt] = paper.render(markdown, doc.meta, fmt, work, date)
        outputs.append(built)
    html, pdf = outputs[0]["html"].decode(), outputs[0]["typst"]
    assert "<title>A test document</title>" in html and 'id="fig-line"' in html
    assert "data:image/svg+xml" in html or "<svg" in html  # the figure is embedded, not linked
    assert pdf.startswith(b"%PDF")
    assert outputs[0] == outputs[1]


def test_a_failing_cell_names_its_line(tmp_path):
    doc = parse_qmd("Text.\n\n```{python}\nraise ValueError('bad results file')\n```\n")
    with pytest.raises(PaperError, match=r"cell at index.qmd:3: ValueError: bad results file"):
        paper.execute(doc, "m", tmp_path)
    assert FORBID_ENV not in os.environ


def test_a_figure_whose_caption_states_what_it_does_not_plot_fails_the_build(tmp_path):
    cell = ("```{{python}}\n#| label: fig-rates\n#| fig-cap: \"{}\"\n"
            "from matplotlib.figure import Figure\nfrom analysis.figurecheck import bind\n"
            "from analysis.stats import proportion\nfig = Figure()\nax = fig.subplots()\nax.set_title('n = 40')\n"
            "bind(fig, [proportion(12, 40)])\n```\n")
    shadow = "```{python}\n_ = 'a manuscript may assign to _'\n```\n\n"  # IPython then stops updating `_`
    good = parse_qmd("See @fig-rates.\n\n" + shadow + cell.format("Error rate with its exact (Clopper-Pearson) interval."))
    paper.execute(good, "m", tmp_path)
    planted = parse_qmd("See @fig-rates.\n\n" + shadow + cell.format("Error rate with its bootstrap interval, n = 64."))
    with pytest.raises(PaperError, match=r"(?s)fig-rates: the caption says n = 64.*names percentile bootstrap"):
        paper.execute(planted, "m", tmp_path)


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


# --- Quarto's semantics, as measured with Quarto 1.7.34 (README: "The manuscript in Quarto") ----

@pytest.mark.parametrize(("plain", "shown"), [
    # (the text/plain of an inline value, what Quarto inserts into the markdown)
    ("'a*b_c [x](javascript:alert(1))'", "a\\*b\\_c \\[x\\]\\(javascript:alert\\(1\\)\\)"),
    ("'1.5, -2'", "1\\.5\\, \\-2"),
    ("'a\\\\b'", "a" + "\\" * 8 + "b"),  # the repr's escaped backslash, doubled, then escaped: Quarto's own quirk
    ("3", "3"), ("-0.5", "-0.5"), ("[1, '<b>']", "[1, '<b>']"),  # not a string: inserted as it is
])
def test_inline_plain_text_is_escaped_as_quarto_escapes_it(plain, shown):
    assert paper.quarto_escaped(plain) == shown


def test_inline_values_with_a_markdown_display_are_markdown_and_others_are_text(tmp_path):
    source = ("```{python}\n#| include: false\nfrom analysis.report import md, tok\n"
              "from IPython.display import Markdown\nraw = '**not bold** <img src=x>'\n```\n\n"
              "A `{python} raw`. B `{python} Markdown('**bold**')`. C `{python} md('{} of {}', tok(' 6'), raw)`.\n")
    inline, _ = paper.execute(parse_qmd(source), "m", tmp_path)
    assert inline == [["\\*\\*not bold\\*\\* <img src=x\\>", "**bold**",
                       "`' 6'` of \\*\\*not bold\\*\\* \\<img src\\=x\\>"]]


def test_an_inline_value_with_an_html_display_is_refused(tmp_path):
    source = ("```{python}\n#| include: false\nfrom IPython.display import HTML\n```\n\n"
              "See `{python} HTML('<b>x</b>')`.\n")
    with pytest.raises(PaperError, match=r"index.qmd:5: inline `\{python\} HTML\('<b>x</b>'\)` has an HTML"):
        paper.execute(parse_qmd(source), "m", tmp_path)


def test_the_front_matter_is_evaluated_before_any_cell(tmp_path):
    """Quarto evaluates the front matter's inline expressions before the first cell: a
    constant works, a cell's variable is a NameError (measured: `name 'later' is not defined`)."""
    works = parse_qmd('---\ntitle: "T `{python} 6 * 7`"\n---\n\n```{python}\nlater = 1\n```\n')
    paper.execute(works, "m", tmp_path)
    assert works.meta["title"] == "T 42"
    fails = parse_qmd('---\ntitle: "T"\nabstract: "`{python} later`"\n---\n\n```{python}\nlater = 1\n```\n')
    with pytest.raises(PaperError, match=r"front matter: inline `\{python\} later`: NameError: name 'later' is not "
                                         r"defined \(Quarto evaluates the front matter before any cell runs"):
        paper.execute(fails, "m", tmp_path)
    assert paper.front_matter_expressions(fails) == [("index.qmd:3", "later")]


def test_parameters_are_injected_as_papermill_writes_them():
    """Measured: Quarto's -P model:xyz adds a cell `# Injected Parameters` / `model = "xyz"`,
    tagged injected-parameters, right after the cell tagged parameters."""
    doc = parse_qmd('```{python}\n#| tags: [parameters]\nmodel = "default"\n```\n\n```{python}\nx = model\n```\n')
    sources = [source for source, _ in paper.notebook_cells(doc, "xyz")]
    assert sources[1:4] == ['model = "default"', '# Injected Parameters\nmodel = "xyz"\n', "x = model"]


def _tree(root, files):
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "index.qmd"


def test_includes_are_expanded_relative_to_the_document_with_their_origins(tmp_path):
    """Measured: an include inside parts/a.qmd names parts/b.qmd, relative to the document."""
    index = _tree(tmp_path, {"index.qmd": "Top.\n\n{{< include parts/a.qmd >}}\n\nEnd.\n",
                             "parts/a.qmd": "A one.\n{{< include parts/b.qmd >}}\n",
                             "parts/b.qmd": "B one.\n\n```{python}\nraise ValueError('in b')\n```\n"})
    source = paper.read_manuscript(index)
    assert source.lines == ["Top.", "", "A one.", "B one.", "", "```{python}", "raise ValueError('in b')", "```",
                            "", "End."]
    assert source.origins[3] == "parts/b.qmd:1" and source.origins[-1] == "index.qmd:5"
    with pytest.raises(PaperError, match=r"the cell at parts/b.qmd:3: ValueError: in b"):
        paper.execute(parse_qmd(source), "m", tmp_path)


@pytest.mark.parametrize(("files", "message"), [
    ({"index.qmd": "{{< include parts/none.qmd >}}\n"}, r"index.qmd:1: include 'parts/none.qmd': no such file"),
    ({"index.qmd": "x\n{{< include a.qmd >}}\n", "a.qmd": "{{< include b.qmd >}}\n", "b.qmd": "{{< include a.qmd >}}\n"},
     r"b.qmd:1: include 'a.qmd' is recursive \(index.qmd -> a.qmd -> b.qmd -> a.qmd\)"),
    ({"index.qmd": "{{< include index.qmd >}}\n"}, r"index.qmd:1: include 'index.qmd' is recursive"),
    ({"index.qmd": "{{< include ../outside.qmd >}}\n"}, r"index.qmd:1: include '../outside.qmd' is outside"),
])
def test_a_missing_recursive_or_escaping_include_names_its_line(tmp_path, files, message):
    (tmp_path.parent / "outside.qmd").write_text("secret\n")
    with pytest.raises(PaperError, match=message):
        paper.read_manuscript(_tree(tmp_path, files))


def test_the_abstract_section_becomes_the_abstract_and_citations_resolve(tmp_path):
    from datetime import datetime, timezone

    source = ("---\ntitle: \"T\"\n---\n\n```{python}\n#| include: false\nfound = 6 * 7\n```\n\n"
              "# Abstract\n\nWe found `{python} found`.\n\n# Body\n\nAs shown before [@doe2020].\n")
    doc = parse_qmd(source)
    inline, _ = paper.execute(doc, "m", tmp_path)
    bib = tmp_path / "refs.bib"
    bib.write_text("@article{doe2020, author = {Doe, Jane}, title = {A Result}, journal = {J}, year = {2020}}\n")
    (tmp_path / "figures").mkdir()
    markdown = paper.assemble(doc, inline, {}, "html", tmp_path / "figures")
    style = paper.Style(filters=(REPO / "paper/filters/abstract.lua",), bibliography=bib)
    html = paper.render(markdown, doc.meta, "html", tmp_path, datetime(2026, 1, 1, tzinfo=timezone.utc), style).decode()
    assert '<div class="abstract">' in html and "We found 42." in html
    assert html.index("We found 42.") < html.index('id="body"')  # in the title block, not a section
    assert 'id="abstract"' not in html
    assert "(Doe 2020)" in html and 'id="refs"' in html and "A Result" in html


def test_links_images_raw_blocks_and_math_from_anywhere_reach_neither_format(tmp_path):
    """Whatever reaches the text: no raw HTML or typst, only https links, only the document's
    own images, math as its text (paper/filters/safe.lua and the reader)."""
    from datetime import datetime, timezone

    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-91c2")
    markdown = ("[a](javascript:alert(1)) [b](https://example.org/x) [c](http://example.org) [d](#sec)\n\n# S {#sec}\n\n"
                f"![e]({secret}) ![f](https://example.org/t.png) ![g](figures/ok.svg)\n\n"
                "`<script>alert(1)</script>`{=html} `#read(\"secret.txt\")`{=typst} <b onmouseover=1>x</b>\n\n"
                "```{=html}\n<script>alert(2)</script>\n```\n\n$\\input{secret.txt}$\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "ok.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="2" height="2"/>')
    style = paper.Style(filters=(REPO / "paper/filters/safe.lua",))
    date = datetime(2026, 1, 1, tzinfo=timezone.utc)
    html = paper.render(markdown, {"title": "T"}, "html", tmp_path, date, style).decode()
    assert "javascript:" not in html and 'href="http://example.org"' not in html and "<script" not in html
    assert 'href="https://example.org/x"' in html and 'href="#sec"' in html
    assert "SECRET-91c2" not in html and "onmouseover" not in html.replace("&lt;b onmouseover", "")
    assert "example.org/t.png" not in html and "data:image/svg+xml" in html  # its own figure is embedded
    assert "\\input{secret.txt}" in html and "<math" not in html
    typ_dir = tmp_path / "typst"
    (typ_dir / "figures").mkdir(parents=True)
    (typ_dir / "figures" / "ok.svg").write_text((tmp_path / "figures" / "ok.svg").read_text())
    (typ_dir / "secret.txt").write_text("SECRET-91c2")
    pdf = paper.render(markdown, {"title": "T"}, "typst", typ_dir, date, style)
    typ = (typ_dir / "index.typ").read_text()
    body = re.sub(r"`[^`]*`", "", typ.split("#show: doc => conf(")[1])  # typst raw text is never evaluated
    assert "#read" not in body and "javascript" not in typ and pdf.startswith(b"%PDF")


def test_the_paper_refuses_a_results_file_that_differs_from_the_md5_in_dvc_lock(tmp_path):
    from analysis.pipeline import LockError, check_recorded_md5

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.json").write_text('{"v": 1}\n')
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  s:\n    cmd: x\n    outs:\n    - path: data/r.json\n"
                                       "      md5: 06a5c2f1e8a6bc0d6f55ad2a0c5d5dbd\n      size: 9\n")
    import hashlib

    good = hashlib.md5(b'{"v": 1}\n').hexdigest()
    (tmp_path / "dvc.lock").write_text((tmp_path / "dvc.lock").read_text().replace("06a5c2f1e8a6bc0d6f55ad2a0c5d5dbd", good))
    assert check_recorded_md5(["data/r.json"], tmp_path) == {"data/r.json": good}
    (tmp_path / "data" / "r.json").write_text('{"v": 2}\n')
    with pytest.raises(LockError, match=r"data/r.json: its MD5 is [0-9a-f]{32}, not the " + good + " that dvc.lock"):
        check_recorded_md5(["data/r.json"], tmp_path)
    with pytest.raises(LockError, match=r"data/other.json: dvc.lock records no MD5 for it"):
        check_recorded_md5(["data/other.json"], tmp_path)
