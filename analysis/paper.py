"""Build the Quarto manuscript paper/index.qmd without Quarto: HTML and PDF, offline.

DVC stage `paper@<model>`. Reads paper/_quarto.yml, the manuscript (paper/index.qmd and the
files it includes) and the model's cached results under data/<model>/ (never a model:
model loading is disabled in the kernel); writes paper/_build/<model>/index.html
(self-contained) and index.pdf.

    python -m analysis.paper --model smollm2-135m

The manuscript is a plain Quarto document: `quarto render paper/index.qmd -P
model:smollm2-135m` renders it where Quarto is installed (`make quarto-check` compares the
two). This builder supports the subset of Quarto that the manuscript uses, with Quarto's
semantics, and rejects what it does not support:

- Includes: `{{< include file.qmd >}}` on a line of its own, expanded before anything
  runs, with the path relative to the document (paper/), as Quarto resolves it, in nested
  includes too; a missing, recursive or escaping include is an error naming the line.
- Python cells (```{python}) with `#|` options: label, fig-cap, tbl-cap, echo, output
  (true, false or asis), include, warning, tags. Defaults come from `execute:` in
  _quarto.yml and the document's front matter.
- Parameters: after the cell tagged `parameters`, a cell assigning `model` (and
  `data_dir`, where results are read from elsewhere), written by papermill's own
  translator, as `quarto render -P model:<key>` injects it.
- Inline values, `{python} expr` between single backticks, evaluated as Quarto does: as
  Jupyter user expressions when the markdown that holds them is reached. A value with a
  markdown display (`report.Md`, IPython's Markdown) is inserted as markdown; any other is
  inserted as its plain-text representation, escaped as Quarto escapes it (a string
  literally). Inline expressions in the front matter are evaluated before any cell runs,
  so they cannot use a cell's variables (the build stops naming the line, as Quarto does).
- Cell outputs: a markdown display is markdown; `output: asis` prints are markdown; other
  text is shown as code.
- Citations: `bibliography:` and `csl:` in the front matter and pandoc's `[@key]`,
  resolved by pandoc's citeproc in both formats (Quarto: `citeproc: true` for typst).
- Figure and table cross-references: a cell labelled fig-* with fig-cap (one figure) or
  tbl-* with tbl-cap (one markdown table); `@fig-x` and `@tbl-x` become numbered links.
  An unknown reference fails the build. Not Quarto's: each figure is checked against its
  caption (analysis/figurecheck.py: the n, p-values and interval kinds it states must be
  those of the results its plot function binds); a mismatch fails the build.
- Front matter: title, subtitle, author, date, bibliography, csl; jupyter and execute. From
  _quarto.yml: execute, filters (pandoc Lua filters, run by both), format.html.css,
  format.typst.include-in-header. The abstract is a section of the body that
  paper/filters/abstract.lua moves into the metadata, in Quarto as here.

Results are data: markdown reads without raw HTML, raw attributes or raw TeX, and
paper/filters/safe.lua keeps only https links and the document's own images. Before any
cell runs, every results file the paper reads is checked against the MD5 that dvc.lock
records for it (a pulled file that was changed on the remote is refused).

Pipeline: qmd -> notebook (nbformat) -> executed in a fresh kernel (nbclient, cwd
paper/) -> pandoc markdown -> HTML (pandoc, resources embedded, MathML) and typst
(pandoc) -> PDF (typst, embedded fonts only, fixed timestamp). The same inputs give the
same bytes.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from analysis.artifacts import atomic_write_bytes
from analysis.models import FORBID_ENV
from analysis.params import exit_on_params_error, load_params, parse_model_arg
from analysis.pipeline import LockError, check_recorded_md5, paper_reads, undeclared_reads
from analysis.paper_kernel import (FIGCHECK_MIME, INLINE_MIME, KERNEL_SETUP, READS_CELL, READS_MIME, figure_check_cell,
                                   injected_parameters, inline_cell)

PAPER_DIR = Path("paper")
BUILD_DIR = PAPER_DIR / "_build"
CELL_OPTIONS = {"label", "fig-cap", "tbl-cap", "echo", "output", "include", "warning", "tags"}
# Quarto's own pattern (src/core/execute-inline.ts): a space or tab after {python}.
INLINE = re.compile(r"(^|[^`])`\{python\}[ \t]([^`]+)`", re.MULTILINE)
INCLUDE = re.compile(r"^\{\{<\s*include\s+(\S+)\s*>\}\}\s*$")
CROSSREF = re.compile(r"(?<![\w@])@((?:fig|tbl)-[A-Za-z0-9_-]+)")
# Results are data: no raw HTML, no raw blocks or inlines (`...`{=html}), no raw TeX.
READER = "markdown-raw_html-raw_attribute-raw_tex"


class PaperError(RuntimeError):
    """The manuscript cannot be built; the message says where and why."""


# --- reading: includes, front matter, cells ----------------------------------------------

@dataclass
class Source:
    """The manuscript with its includes expanded: each line with the file and line it came from."""

    lines: list[str]
    origins: list[str]  # "index.qmd:12", "_errors.qmd:3"

    def where(self, index: int) -> str:
        return self.origins[index] if index < len(self.origins) else "end of the manuscript"


def read_manuscript(path: Path, root: Path | None = None, _stack: tuple[Path, ...] = ()) -> Source:
    """The file's lines with every `{{< include f >}}` replaced by f's, recursively. As in
    Quarto (src/core/handlers/base.ts, resolvePath), f is relative to the document being
    rendered (`root`, its folder), in nested includes too, and '/f' to the project's folder,
    which is the document's here (paper/_quarto.yml); nothing outside it is read."""
    path, root = path.resolve(), (root or path.parent).resolve()
    lines, origins = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        here = f"{path.relative_to(root)}:{number}"
        match = INCLUDE.match(line.strip())
        if not match:
            lines.append(line)
            origins.append(here)
            continue
        target = (root / match.group(1).lstrip("/")).resolve()
        if root not in target.parents:
            raise PaperError(f"{here}: include {match.group(1)!r} is outside {root.name}/")
        if target == path or target in _stack:
            chain = " -> ".join(p.name for p in (*_stack, path, target))
            raise PaperError(f"{here}: include {match.group(1)!r} is recursive ({chain})")
        if not target.is_file():
            raise PaperError(f"{here}: include {match.group(1)!r}: no such file {target.relative_to(root)}")
        included = read_manuscript(target, root, (*_stack, path))
        lines += included.lines
        origins += included.origins
    return Source(lines, origins)


@dataclass
class Markdown:
    text: str
    where: str = ""  # its first line


@dataclass
class Code:
    source: str
    options: dict[str, Any]
    where: str  # its first line, for error messages
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Document:
    meta: dict[str, Any]
    chunks: list[Markdown | Code]
    meta_lines: list[tuple[str, str]] = field(default_factory=list)  # (where, text) of the front matter


def parse_qmd(text: str | Source, name: str = "index.qmd") -> Document:
    source = text if isinstance(text, Source) else Source(
        text.splitlines(), [f"{name}:{i}" for i in range(1, len(text.splitlines()) + 1)])
    lines, meta, meta_lines, start = source.lines, {}, [], 0
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is None:
            raise PaperError(f"{source.where(0)}: front matter opened with '---' is never closed")
        meta = yaml.safe_load("\n".join(lines[1:end])) or {}
        meta_lines = [(source.where(i), lines[i]) for i in range(1, end)]
        start = end + 1
    chunks: list[Markdown | Code] = []
    buffer: list[str] = []
    buffer_start = start
    i = start
    while i < len(lines):
        line = lines[i]
        if re.fullmatch(r"```+\s*\{python\}\s*", line):
            fence = line[: len(line) - len(line.lstrip("`"))]
            close = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
            if close is None:
                raise PaperError(f"{source.where(i)}: python cell is never closed")
            if "".join(buffer).strip():
                chunks.append(Markdown("\n".join(buffer), source.where(buffer_start)))
            buffer, buffer_start = [], close + 1
            chunks.append(_code_cell(lines[i + 1: close], source.where(i)))
            i = close + 1
            continue
        buffer.append(line)
        i += 1
    if "".join(buffer).strip():
        chunks.append(Markdown("\n".join(buffer), source.where(buffer_start)))
    return Document(meta, chunks, meta_lines)


def _code_cell(body: list[str], where: str) -> Code:
    option_lines = []
    while body and body[0].startswith("#|"):
        option_lines.append(body.pop(0)[2:].strip())
    options = (yaml.safe_load("\n".join(option_lines)) or {}) if option_lines else {}
    unknown = set(options) - CELL_OPTIONS
    if unknown:
        raise PaperError(f"{where}: unsupported cell option(s) {sorted(unknown)}; supported: {sorted(CELL_OPTIONS)}")
    return Code("\n".join(body).strip("\n"), options, where)


def inline_expressions(text: str) -> list[str]:
    return [match.group(2).strip() for match in INLINE.finditer(text)]


def front_matter_expressions(doc: Document) -> list[tuple[str, str]]:
    """(where, expression) of every inline expression in the front matter."""
    return [(where, expr) for where, line in doc.meta_lines for expr in inline_expressions(line)]


# --- execution -------------------------------------------------------------------------

Cells = list[tuple[str, Code | Markdown | None]]


def notebook_cells(doc: Document, model: str, data_dir: Path | None = None) -> Cells:
    """The cells to run, each with the chunk it belongs to: setup, the front matter's inline
    expressions (before any cell, as Quarto evaluates them), the document's code cells (the
    parameters injected after the cell tagged `parameters`), one cell per markdown chunk
    with inline expressions, and last the cell that reports which results files were read."""
    cells: Cells = [(KERNEL_SETUP, None)]
    front = front_matter_expressions(doc)
    if front:
        cells.append((inline_cell([expr for _, expr in front]), Markdown("", "front matter")))
    for chunk in doc.chunks:
        if isinstance(chunk, Code):
            cells.append((chunk.source, chunk))
            label = str(chunk.options.get("label", ""))
            if label.startswith("fig-") and "fig-cap" in chunk.options and chunk.options.get("include", True) is not False:
                cells.append((figure_check_cell(label, str(chunk.options["fig-cap"])), None))
            if "parameters" in (chunk.options.get("tags") or []):
                cells.append((injected_parameters(model, data_dir), None))
        elif inline_expressions(chunk.text):
            cells.append((inline_cell(inline_expressions(chunk.text)), chunk))
    return [*cells, (READS_CELL, None)]


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this one, plus the repository on PYTHONPATH and model
    loading forbidden. The calling process's own environment is left as it is."""
    repo_root = str(Path.cwd().resolve())
    return {**os.environ, FORBID_ENV: "1", "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
            "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}


def _run_notebook(nb, cells: Cells, paper_dir: Path, timeout: int) -> None:
    from jupyter_client import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    sockets = tempfile.mkdtemp(prefix="paper-kernel-")
    # local sockets (ipc) rather than TCP: nothing listens on the network, nothing warns about it
    manager = KernelManager(kernel_name="python3", transport="ipc", ip=str(Path(sockets) / "kernel"))
    client = NotebookClient(nb, km=manager, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(paper_dir)}})
    prefer = os.environ.get("JUPYTER_PREFER_ENV_PATH")
    os.environ["JUPYTER_PREFER_ENV_PATH"] = "1"  # the kernel of this venv, not a user-wide one
    try:
        client.execute(env=kernel_env())
    except CellExecutionError as exc:
        raise _cell_error(nb, cells, exc) from None
    finally:
        if prefer is None:
            os.environ.pop("JUPYTER_PREFER_ENV_PATH", None)
        else:
            os.environ["JUPYTER_PREFER_ENV_PATH"] = prefer
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
        shutil.rmtree(sockets, ignore_errors=True)


def _cell_error(nb, cells: Cells, exc: Exception) -> PaperError:
    failed = next((i for i, cell in enumerate(nb.cells)
                   if any(o.get("output_type") == "error" for o in cell.get("outputs", []))), None)
    where = ""
    if failed is not None and cells[failed][1] is not None:
        where = f" in the cell at {cells[failed][1].where}"
    error = next((o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"), {})
    return PaperError(f"the manuscript failed{where}: {error.get('ename', 'Error')}: {error.get('evalue', exc)}")


def _data_of(cell, mime: str) -> Any:
    values = [o["data"][mime] for o in cell.outputs if mime in o.get("data", {})]
    return values[0] if values else None


def quarto_escaped(plain: str) -> str:
    """Quarto's text for a text/plain inline result (src/core/jupyter/jupyter-inline.ts): a
    string's repr loses its quotes and is escaped to show literally; other reprs go as they are."""
    if len(plain) >= 2 and plain[0] == plain[-1] and plain[0] in "'\"":
        text = plain[1:-1].replace("\\", "\\\\")
        return re.sub(r"([\\`*_{}\[\]()>#+,\-.!])", r"\\\1", text)
    return plain


def inline_markdown(reply: dict[str, Any], where: str, expr: str) -> str:
    """What Quarto inserts for one user-expression reply: markdown for a markdown display,
    the escaped plain text otherwise. HTML or TeX displays are refused: the reader takes no
    raw HTML or TeX, so they would vanish from the paper."""
    if reply.get("status") != "ok":
        hint = (" (Quarto evaluates the front matter before any cell runs; compute the value in the body)"
                if where == "front matter" else "")
        raise PaperError(f"{where}: inline `{{python}} {expr}`: {reply.get('ename')}: {reply.get('evalue')}{hint}")
    data = reply.get("data", {})
    if "text/html" in data or "text/latex" in data:
        raise PaperError(f"{where}: inline `{{python}} {expr}` has an HTML or TeX display; return a report.Md "
                         "(markdown) or a plain value")
    if "text/markdown" in data:
        return data["text/markdown"]
    return quarto_escaped(data.get("text/plain", ""))


def execute(doc: Document, model: str, paper_dir: Path, timeout: int = 600,
            data_dir: Path | None = None) -> tuple[list[list[str]], list[str]]:
    """Run every cell in one fresh kernel; fill Code.outputs and the front matter's values.
    Returns each Markdown chunk's inline values, as markdown, and the results files read."""
    import nbformat

    cells = notebook_cells(doc, model, data_dir)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source, _ in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    _run_notebook(nb, cells, paper_dir, timeout)
    inline: dict[int, list[str]] = {}
    problems = [p for cell in nb.cells for p in (_data_of(cell, FIGCHECK_MIME) or [])]
    if problems:
        raise PaperError("figures whose labels do not match what they plot (analysis/figurecheck.py):\n  "
                         + "\n  ".join(problems))
    for cell, (_, chunk) in zip(nb.cells, cells, strict=True):
        if isinstance(chunk, Code) and cell.source == chunk.source:
            chunk.outputs = [dict(o) for o in cell.outputs]
        elif isinstance(chunk, Markdown):
            replies = _data_of(cell, INLINE_MIME) or {}
            if chunk.where == "front matter":
                _fill_front_matter(doc, replies)
                continue
            exprs = inline_expressions(chunk.text)
            inline[id(chunk)] = [inline_markdown(replies[str(i)], chunk.where, e) for i, e in enumerate(exprs)]
    values = [inline.get(id(chunk), []) for chunk in doc.chunks if isinstance(chunk, Markdown)]
    return values, _data_of(nb.cells[-1], READS_MIME) or []


def _fill_front_matter(doc: Document, replies: dict[str, Any]) -> None:
    front = front_matter_expressions(doc)
    values = {expr: inline_markdown(replies[str(i)], "front matter", expr) for i, (_, expr) in enumerate(front)}

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            return INLINE.sub(lambda m: m.group(1) + values[m.group(2).strip()], value)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return [fill(v) for v in value] if isinstance(value, list) else value

    doc.meta = fill(doc.meta)


# --- assembling markdown ---------------------------------------------------------------

@dataclass
class Numbering:
    figures: dict[str, int] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)

    def add(self, label: str) -> int:
        table = self.figures if label.startswith("fig-") else self.tables
        if label in self.figures or label in self.tables:
            raise PaperError(f"label {label!r} is used twice")
        table[label] = len(table) + 1
        return table[label]

    def name(self, label: str) -> str:
        if label in self.figures:
            return f"Figure {self.figures[label]}"
        if label in self.tables:
            return f"Table {self.tables[label]}"
        raise PaperError(f"@{label}: no cell has this label")


def _option(chunk: Code, defaults: dict[str, Any], name: str, fallback: Any) -> Any:
    return chunk.options.get(name, defaults.get(name, fallback))


def _fenced(text: str, lang: str = "") -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _outputs(chunk: Code, defaults: dict[str, Any], output: Any) -> tuple[list[str], list[str], list[str]]:
    """(markdown parts, figures as SVG, markdown tables) of a code cell's outputs."""
    parts, figures, tables = [], [], []
    label = chunk.options.get("label", "")
    for out in chunk.outputs:
        kind = out["output_type"]
        if kind == "stream":
            if out["name"] == "stderr" and not _option(chunk, defaults, "warning", True):
                continue
            parts.append(out["text"] if output == "asis" and out["name"] == "stdout" else _fenced(out["text"]))
        elif kind in ("display_data", "execute_result"):
            data = out["data"]
            if "image/svg+xml" in data:
                figures.append(data["image/svg+xml"])
            elif "text/markdown" in data:
                (tables if label.startswith("tbl-") else parts).append(data["text/markdown"])
            elif "text/plain" in data:
                parts.append(_fenced(data["text/plain"]))
    return parts, figures, tables


def render_code(chunk: Code, defaults: dict[str, Any], numbering: Numbering, fmt: str, figure_dir: Path) -> str:
    if _option(chunk, defaults, "include", True) is False:
        return ""
    parts = [_fenced(chunk.source, "python")] if _option(chunk, defaults, "echo", True) else []
    output = _option(chunk, defaults, "output", True)
    if output is False:
        return "\n\n".join(parts)
    more, figures, tables = _outputs(chunk, defaults, output)
    parts += more
    label = chunk.options.get("label", "")
    if label.startswith("fig-"):
        if len(figures) != 1 or "fig-cap" not in chunk.options:
            raise PaperError(f"{chunk.where}: a fig- cell needs a fig-cap and exactly one figure (got {len(figures)})")
        number = numbering.add(label)
        (figure_dir / f"{label}.svg").write_text(figures[0])
        caption = chunk.options["fig-cap"] if fmt == "typst" else f"Figure {number}: {chunk.options['fig-cap']}"
        parts.append(f"![{caption}]({figure_dir.name}/{label}.svg){{#{label}}}")
    elif figures:
        raise PaperError(f"{chunk.where}: a figure needs a fig- label and a fig-cap, so that it is numbered")
    if label.startswith("tbl-"):
        if len(tables) != 1 or "tbl-cap" not in chunk.options:
            raise PaperError(f"{chunk.where}: a tbl- cell needs a tbl-cap and exactly one markdown table output")
        number = numbering.add(label)
        caption = chunk.options["tbl-cap"] if fmt == "typst" else f"Table {number}: {chunk.options['tbl-cap']}"
        parts.append(f"{tables[0].strip()}\n\n: {caption} {{#{label}}}")
    return "\n\n".join(p.strip("\n") for p in parts if p.strip())


def assemble(doc: Document, inline: list[list[str]], defaults: dict[str, Any], fmt: str,
             figure_dir: Path | None) -> str:
    numbering = Numbering()
    blocks = []
    markdown_index = 0
    for chunk in doc.chunks:
        if isinstance(chunk, Code):
            blocks.append(render_code(chunk, defaults, numbering, fmt, figure_dir))
            continue
        values = iter(inline[markdown_index])
        markdown_index += 1
        blocks.append(INLINE.sub(lambda m: m.group(1) + next(values), chunk.text))
    body = "\n\n".join(b for b in blocks if b)
    return CROSSREF.sub(lambda m: f"[{numbering.name(m.group(1))}](#{m.group(1)})", body)


# --- rendering -------------------------------------------------------------------------

def _pandoc_meta(meta: dict[str, Any]) -> dict[str, Any]:
    keep = {"title", "subtitle", "author", "date", "abstract"}
    return {k: v for k, v in meta.items() if k in keep}


@dataclass(frozen=True)
class Style:
    """What _quarto.yml says of the output: CSS, typst preamble, Lua filters, bibliography."""

    css: Path | None = None
    typst_header: Path | None = None
    filters: tuple[Path, ...] = ()
    bibliography: Path | None = None
    csl: Path | None = None


def render(markdown: str, meta: dict[str, Any], fmt: str, workdir: Path, date: datetime,
           style: Style = Style()) -> bytes:
    import pypandoc

    source = workdir / f"paper.{fmt}.md"
    source.write_text("---\n" + yaml.safe_dump(_pandoc_meta(meta), sort_keys=True) + "---\n\n" + markdown)
    args = [f"--lua-filter={f.resolve()}" for f in style.filters]
    if style.bibliography:
        args += ["--citeproc", f"--bibliography={style.bibliography.resolve()}"]
        args += [f"--csl={style.csl.resolve()}"] if style.csl else []
    if fmt == "html":
        out = workdir / "index.html"
        args += ["--standalone", "--embed-resources", "--mathml", "--toc", "--section-divs", "--columns=1000",
                 f"--resource-path={workdir}"]
        if style.css:
            args.append(f"--css={style.css.resolve()}")
        pypandoc.convert_file(str(source), "html5", format=READER, outputfile=str(out), extra_args=args)
        return out.read_bytes()
    import typst

    typ = workdir / "index.typ"
    args += ["--standalone", "--columns=1000"]
    if style.typst_header:
        args.append(f"--include-in-header={style.typst_header.resolve()}")
    pypandoc.convert_file(str(source), "typst", format=READER, outputfile=str(typ), extra_args=args)
    out = workdir / "index.pdf"
    typst.compile(str(typ), output=str(out), root=str(workdir), ignore_system_fonts=True,
                  timestamp=int(date.timestamp()))
    return out.read_bytes()


def check_reads(model: str, read: list[str], repo: Path) -> None:
    """The manuscript must read exactly the results that dvc.yaml lists for the paper."""
    missing, unused = undeclared_reads([Path(p) for p in read], paper_reads(model), own=[], root=repo)
    if missing or unused:
        raise PaperError(f"the manuscript read {missing or 'nothing undeclared'} that no StageSpec's `paper` "
                         f"lists, and never read {unused or 'nothing'} that one does (analysis/params.py)")


def project_style(project: dict[str, Any], doc: Document, paper_dir: Path) -> Style:
    formats = project.get("format") or {}
    html, typst_format = formats.get("html") or {}, formats.get("typst") or {}
    css = paper_dir / html.get("css", "style.css")
    header = typst_format.get("include-in-header")
    return Style(css=css if css.is_file() else None, typst_header=paper_dir / header if header else None,
                 filters=tuple(paper_dir / f for f in project.get("filters") or ()),
                 bibliography=paper_dir / doc.meta["bibliography"] if doc.meta.get("bibliography") else None,
                 csl=paper_dir / doc.meta["csl"] if doc.meta.get("csl") else None)


def build(model: str, paper_dir: Path = PAPER_DIR, out_dir: Path | None = None,
          data_dir: Path | None = None) -> tuple[Path, Path]:
    """The paper of `model`'s results: those under data/ by default, or under `data_dir` (a
    folder named data, laid out like the repository's, with dvc.lock beside it)."""
    with exit_on_params_error():
        params = load_params()
        params.model(model)
    out_dir = out_dir or BUILD_DIR / model
    repo = data_dir.resolve().parent if data_dir else paper_dir.resolve().parent
    try:
        check_recorded_md5(paper_reads(model), repo)
    except LockError as exc:
        raise PaperError(str(exc)) from None
    project = yaml.safe_load((paper_dir / "_quarto.yml").read_text()) or {}
    doc = parse_qmd(read_manuscript(paper_dir / "index.qmd"))
    defaults = {**(project.get("execute") or {}), **(doc.meta.get("execute") or {})}
    inline, read = execute(doc, model, paper_dir, data_dir=data_dir.resolve() if data_dir else None)
    check_reads(model, read, repo)
    style, date = project_style(project, doc, paper_dir), datetime.fromisoformat(params.paper.date)
    outputs = {}
    with tempfile.TemporaryDirectory(prefix="paper-") as tmp:
        for fmt in ("html", "typst"):
            workdir = Path(tmp) / fmt
            (workdir / "figures").mkdir(parents=True)
            markdown = assemble(doc, inline, defaults, fmt, workdir / "figures")
            outputs[fmt] = render(markdown, doc.meta, fmt, workdir, date, style)
    html, pdf = out_dir / "index.html", out_dir / "index.pdf"
    atomic_write_bytes(html, outputs["html"])
    atomic_write_bytes(pdf, outputs["typst"])
    return html, pdf


def main(argv: list[str] | None = None) -> None:
    model, _ = parse_model_arg("paper", argv)
    try:
        html, pdf = build(model)
    except PaperError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(4) from None
    except KeyboardInterrupt:
        print(f"interrupted: paper@{model} stopped; its outputs are the old ones", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"wrote {html} and {pdf}")


if __name__ == "__main__":
    main()
