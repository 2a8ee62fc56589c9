"""Build the Quarto manuscript paper/index.qmd without Quarto: HTML and PDF, offline.

DVC stage `paper@<model>`. Reads paper/_quarto.yml, paper/index.qmd and the model's
cached results under data/<model>/ (never a model: model loading is disabled in the
kernel); writes paper/_build/<model>/index.html (self-contained) and index.pdf.

    python -m analysis.paper --model smollm2-135m

The manuscript stays a plain Quarto document (`quarto render paper/index.qmd -P
model:gpt2-small` works where Quarto is installed). This builder supports the subset of
Quarto that the manuscript uses, and rejects what it does not support:

- Python cells (```{python}) with `#|` options: label, fig-cap, tbl-cap, echo, output
  (true, false or asis), include, warning, tags. Defaults come from `execute:` in
  _quarto.yml and the document's front matter.
- A cell tagged `parameters`; the builder injects `model = "<model>"` after it, like
  `quarto render -P model:<model>` (and `data_dir`, where results are read from elsewhere).
- Inline values: `{python} expr` between single backticks, rendered with str(); in the
  text and in the front matter's abstract (evaluated after every cell, so that it can
  summarise what they computed).
- Citations: `bibliography:` in the front matter (a BibTeX file beside index.qmd) and
  pandoc's `[@key]` syntax, resolved by pandoc's citeproc in both formats.
- Figure and table cross-references: a cell labelled fig-* with fig-cap (one figure) or
  tbl-* with tbl-cap (one markdown table); `@fig-x` and `@tbl-x` in the text become
  numbered links. An unknown reference fails the build.
- Front matter: title, subtitle, author, date, abstract, bibliography (passed to pandoc);
  jupyter and execute. From _quarto.yml: execute, format.html.css, format.typst.include-in-header.

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
from analysis.pipeline import paper_reads, undeclared_reads

PAPER_DIR = Path("paper")
BUILD_DIR = PAPER_DIR / "_build"
CELL_OPTIONS = {"label", "fig-cap", "tbl-cap", "echo", "output", "include", "warning", "tags"}
INLINE = re.compile(r"`\{python\}\s+([^`]+?)`")
CROSSREF = re.compile(r"(?<![\w@])@((?:fig|tbl)-[A-Za-z0-9_-]+)")
INLINE_MIME = "application/x-inline-values+json"
# Pandoc's markdown without raw HTML: the manuscript writes none, and a string that reached
# the text unescaped could otherwise add tags (or make --embed-resources read a file).
READER = "markdown-raw_html"
READS_MIME = "application/x-results-read+json"


class PaperError(RuntimeError):
    """The manuscript cannot be built; the message says where and why."""


# --- parsing ---------------------------------------------------------------------------

@dataclass
class Markdown:
    text: str


@dataclass
class Code:
    source: str
    options: dict[str, Any]
    line: int  # where the cell starts in the .qmd, for error messages
    outputs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Document:
    meta: dict[str, Any]
    chunks: list[Markdown | Code]


def parse_qmd(text: str, name: str = "index.qmd") -> Document:
    meta: dict[str, Any] = {}
    lines = text.splitlines()
    start = 0
    if lines and lines[0].strip() == "---":
        end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
        if end is None:
            raise PaperError(f"{name}: front matter opened with '---' is never closed")
        meta = yaml.safe_load("\n".join(lines[1:end])) or {}
        start = end + 1
    chunks: list[Markdown | Code] = []
    buffer: list[str] = []
    i = start
    while i < len(lines):
        line = lines[i]
        if re.fullmatch(r"```+\s*\{python\}\s*", line):
            fence = line[: len(line) - len(line.lstrip("`"))]
            close = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
            if close is None:
                raise PaperError(f"{name}:{i + 1}: python cell is never closed")
            if "".join(buffer).strip():
                chunks.append(Markdown("\n".join(buffer)))
            buffer = []
            body = lines[i + 1 : close]
            option_lines = []
            while body and body[0].startswith("#|"):
                option_lines.append(body.pop(0)[2:].strip())
            options = yaml.safe_load("\n".join(option_lines)) or {} if option_lines else {}
            unknown = set(options) - CELL_OPTIONS
            if unknown:
                raise PaperError(f"{name}:{i + 1}: unsupported cell option(s) {sorted(unknown)}; "
                                 f"supported: {sorted(CELL_OPTIONS)}")
            chunks.append(Code("\n".join(body).strip("\n"), options, i + 1))
            i = close + 1
            continue
        buffer.append(line)
        i += 1
    if "".join(buffer).strip():
        chunks.append(Markdown("\n".join(buffer)))
    return Document(meta, chunks)


# --- execution -------------------------------------------------------------------------

KERNEL_SETUP = """
from matplotlib.figure import Figure as _Figure
from analysis.artifacts import figure_svg as _figure_svg

_formatters = get_ipython().display_formatter.formatters
_formatters["image/svg+xml"].for_type(_Figure, lambda fig: _figure_svg(fig).decode())
_formatters["image/png"].pop(_Figure, None)
del _formatters
"""
READS_CELL = f"""
from IPython.display import display as _display
from analysis.artifacts import reads as _reads
_display({{{READS_MIME!r}: sorted(str(p) for p in _reads())}}, raw=True)
"""


def _inline_cell(expressions: list[str]) -> str:
    items = ", ".join(f"str({expr})" for expr in expressions)
    return (f"from IPython.display import display as _display\n"
            f"_display({{{INLINE_MIME!r}: [{items}]}}, raw=True)")


def notebook_cells(doc: Document, model: str, data_dir: Path | None = None) -> list[tuple[str, Code | Markdown | None]]:
    """The cells to run, each with the chunk it belongs to: setup, the document's code
    cells (the model injected after the parameters cell), one cell per markdown chunk
    with inline values, and last the cell that reports which results files were read."""
    cells: list[tuple[str, Code | Markdown | None]] = [(KERNEL_SETUP, None)]
    for chunk in doc.chunks:
        if isinstance(chunk, Code):
            cells.append((chunk.source, chunk))
            if "parameters" in (chunk.options.get("tags") or []):
                injected = f"model = {model!r}" + (f"\ndata_dir = {str(data_dir)!r}" if data_dir else "")
                cells.append((injected, None))
        elif INLINE.findall(chunk.text):
            cells.append((_inline_cell(INLINE.findall(chunk.text)), chunk))
    abstract = doc.meta.get("abstract")
    if isinstance(abstract, str) and INLINE.findall(abstract):
        cells.append((_inline_cell(INLINE.findall(abstract)), Markdown(abstract)))
    return [*cells, (READS_CELL, None)]


def kernel_env() -> dict[str, str]:
    """The kernel's environment: this one, plus the repository on PYTHONPATH and model
    loading forbidden. The calling process's own environment is left as it is."""
    repo_root = str(Path.cwd().resolve())
    return {**os.environ, FORBID_ENV: "1", "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED", "0"),
            "PYTHONPATH": os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))}


def _run_notebook(nb, cells: list, paper_dir: Path, timeout: int) -> None:
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


def _cell_error(nb, cells: list, exc: Exception) -> PaperError:
    failed = next((i for i, cell in enumerate(nb.cells)
                   if any(o.get("output_type") == "error" for o in cell.get("outputs", []))), None)
    where = ""
    if failed is not None and cells[failed][1] is not None:
        chunk = cells[failed][1]
        where = f" in the cell at index.qmd:{chunk.line}" if isinstance(chunk, Code) else " in an inline value"
    error = next((o for cell in nb.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"), {})
    return PaperError(f"the manuscript failed{where}: {error.get('ename', 'Error')}: {error.get('evalue', exc)}")


def _data_of(cell, mime: str) -> Any:
    values = [o["data"][mime] for o in cell.outputs if mime in o.get("data", {})]
    return values[0] if values else None


def execute(doc: Document, model: str, paper_dir: Path, timeout: int = 600,
            data_dir: Path | None = None) -> tuple[list[list[str]], list[str]]:
    """Run every cell in one fresh kernel; fill Code.outputs. Returns each Markdown chunk's
    inline values, and the results files the cells read."""
    import nbformat

    cells = notebook_cells(doc, model, data_dir)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source, _ in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    _run_notebook(nb, cells, paper_dir, timeout)
    inline: dict[int, list[str]] = {}
    for cell, (_, chunk) in zip(nb.cells, cells, strict=True):
        if isinstance(chunk, Code) and cell.source == chunk.source:
            chunk.outputs = [dict(o) for o in cell.outputs]
        elif isinstance(chunk, Markdown):
            inline[id(chunk)] = _data_of(cell, INLINE_MIME) or []
            if not any(chunk is c for c in doc.chunks):  # the abstract
                values = iter(inline[id(chunk)])
                doc.meta["abstract"] = INLINE.sub(lambda _: next(values), chunk.text)
    values = [inline.get(id(chunk), []) for chunk in doc.chunks if isinstance(chunk, Markdown)]
    return values, _data_of(nb.cells[-1], READS_MIME) or []


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


def render_code(chunk: Code, defaults: dict[str, Any], numbering: Numbering, fmt: str, figure_dir: Path) -> str:
    if _option(chunk, defaults, "include", True) is False:
        return ""
    parts = []
    if _option(chunk, defaults, "echo", True):
        parts.append(_fenced(chunk.source, "python"))
    output = _option(chunk, defaults, "output", True)
    label = chunk.options.get("label", "")
    if output is False:
        return "\n\n".join(parts)
    figures, tables = [], []
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
    where = f"index.qmd:{chunk.line}"
    if label.startswith("fig-"):
        if len(figures) != 1 or "fig-cap" not in chunk.options:
            raise PaperError(f"{where}: a fig- cell needs a fig-cap and exactly one figure (got {len(figures)})")
        number = numbering.add(label)
        (figure_dir / f"{label}.svg").write_text(figures[0])
        caption = chunk.options["fig-cap"] if fmt == "typst" else f"Figure {number}: {chunk.options['fig-cap']}"
        parts.append(f"![{caption}]({figure_dir.name}/{label}.svg){{#{label}}}")
    elif figures:
        raise PaperError(f"{where}: a figure needs a fig- label and a fig-cap, so that it is numbered")
    if label.startswith("tbl-"):
        if len(tables) != 1 or "tbl-cap" not in chunk.options:
            raise PaperError(f"{where}: a tbl- cell needs a tbl-cap and exactly one markdown table output")
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
        blocks.append(INLINE.sub(lambda _: next(values), chunk.text))
    body = "\n\n".join(b for b in blocks if b)
    return CROSSREF.sub(lambda m: f"[{numbering.name(m.group(1))}](#{m.group(1)})", body)


# --- rendering -------------------------------------------------------------------------

def _pandoc_meta(meta: dict[str, Any]) -> dict[str, Any]:
    keep = {"title", "subtitle", "author", "date", "abstract"}
    return {k: v for k, v in meta.items() if k in keep}


def render(markdown: str, meta: dict[str, Any], fmt: str, workdir: Path, css: Path | None, date: datetime,
           typst_header: Path | None = None, bibliography: Path | None = None) -> bytes:
    import pypandoc

    source = workdir / f"paper.{fmt}.md"
    source.write_text("---\n" + yaml.safe_dump(_pandoc_meta(meta), sort_keys=True) + "---\n\n" + markdown)
    cite = ["--citeproc", f"--bibliography={bibliography.resolve()}"] if bibliography else []
    if fmt == "html":
        out = workdir / "index.html"
        args = ["--standalone", "--embed-resources", "--mathml", "--toc", "--section-divs", "--columns=1000",
                f"--resource-path={workdir}", *cite]
        if css:
            args.append(f"--css={css.resolve()}")
        pypandoc.convert_file(str(source), "html5", format=READER, outputfile=str(out), extra_args=args)
        return out.read_bytes()
    import typst

    typ = workdir / "index.typ"
    args = ["--standalone", "--columns=1000", *cite]
    if typst_header:
        args.append(f"--include-in-header={typst_header.resolve()}")
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


def build(model: str, paper_dir: Path = PAPER_DIR, out_dir: Path | None = None,
          data_dir: Path | None = None) -> tuple[Path, Path]:
    """The paper of `model`'s results: those under data/ by default, or under `data_dir` (a
    folder named data, laid out like the repository's)."""
    with exit_on_params_error():
        params = load_params()
        params.model(model)
    out_dir = out_dir or BUILD_DIR / model
    project = yaml.safe_load((paper_dir / "_quarto.yml").read_text()) or {}
    doc = parse_qmd((paper_dir / "index.qmd").read_text())
    defaults = {**(project.get("execute") or {}), **(doc.meta.get("execute") or {})}
    inline, read = execute(doc, model, paper_dir, data_dir=data_dir.resolve() if data_dir else None)
    check_reads(model, read, data_dir.resolve().parent if data_dir else paper_dir.resolve().parent)
    html_format = (project.get("format") or {}).get("html") or {}
    typst_format = (project.get("format") or {}).get("typst") or {}
    css = paper_dir / html_format.get("css", "style.css")
    header = paper_dir / typst_format["include-in-header"] if "include-in-header" in typst_format else None
    date = datetime.fromisoformat(params.paper.date)
    bibliography = paper_dir / doc.meta["bibliography"] if doc.meta.get("bibliography") else None
    outputs = {}
    with tempfile.TemporaryDirectory(prefix="paper-") as tmp:
        for fmt in ("html", "typst"):
            workdir = Path(tmp) / fmt
            (workdir / "figures").mkdir(parents=True)
            markdown = assemble(doc, inline, defaults, fmt, workdir / "figures")
            outputs[fmt] = render(markdown, doc.meta, fmt, workdir, css if css.is_file() else None, date, header,
                                  bibliography)
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
    print(f"wrote {html} and {pdf}")


if __name__ == "__main__":
    main()
