"""Build the book as static HTML pages from the notebooks' stored outputs: `make site`, or

    python site/build.py [--out _site] [NOTEBOOK ...]

Nothing is executed and nothing is downloaded: the pages are the outputs `make book` stored, rendered with
nbconvert; math is typeset in the browser by the MathJax that the PyPI package jupyter-server-mathjax
installs (copied next to the pages, so they read offline too); widgets are drawn once from their stored
state (site/widgets.py). Every page has the table of contents and links to the previous and next chapter.
Open _site/index.html in a browser, or serve the folder (`python -m http.server -d _site`).

A page is for reading: nbdev's `#|` directive lines are not shown, and everything a notebook stored as HTML
(markdown, HTML outputs, widget state) passes an allow-list (site/sanitize.py); JavaScript outputs are not
copied. Before anything is written, --out is checked (a new or existing folder we may write, not the
repository, nor a folder of its sources) and every notebook is read; a problem is one line and exit status 1.
"""
import argparse, html, importlib.util, os, re, shutil, sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from traitlets.config import Config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SOURCES = ("notebooks", "qwen3_lib", "figures", "site", "tests", "benchmarks", ".git")


def _load(name: str, path: Path):
    "Import a file next to this one under a name of its own (site/ is not a package; 'widgets' is a common name)."
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec); sys.modules[name] = mod; spec.loader.exec_module(mod)
    return mod

widgets = _load("qwen3_book_widgets", HERE / "widgets.py")
sanitize = _load("qwen3_book_sanitize", HERE / "sanitize.py")

MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"


class BuildError(Exception):
    "Bad arguments (an --out we must not write, a notebook that is missing or broken): one line for the user."


def book_order(nb_dir: Path) -> list[Path]:
    "index first, then the chapters by name (00_..., 01_..., 10b_...), the appendices (A1_...), the solutions."
    chapters = sorted(nb_dir.glob("[0-9][0-9]*.ipynb"))
    appendices = sorted(nb_dir.glob("A[0-9]*.ipynb"))
    extra = [nb_dir / "solutions.ipynb"] if (nb_dir / "solutions.ipynb").exists() else []
    return [nb_dir / "index.ipynb", *chapters, *appendices, *extra]


def page_name(nb_path: Path) -> str:
    return nb_path.stem + ".html"


def title_of(nb) -> str:
    "The first markdown heading of a notebook, without the leading #."
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return ""


def toc_items(pages, current: str) -> str:
    items = []
    for name, title in pages:
        cls = ' class="current"' if name == current else ""
        items.append(f'<li{cls}><a href="{html.escape(name)}">{html.escape(title)}</a></li>')
    return "<ol>" + "".join(items) + "</ol>"


def toc_html(pages, current: str) -> str:
    "The table of contents beside the page (a wide window)."
    return ('<nav class="book-toc"><a class="book-home" href="index.html">Qwen3 from Scratch</a>'
            + toc_items(pages, current) + "</nav>")


def toc_menu_html(pages, current: str) -> str:
    """The same table of contents, collapsed above the page (a narrow window, where it would otherwise come before
    the title): a <details> that opens in place, no script. book.css shows one of the two."""
    return ('<details class="book-menu"><summary>Qwen3 from Scratch &middot; contents</summary>'
            '<nav aria-label="Contents">' + toc_items(pages, current) + "</nav></details>")


def prev_next_html(pages, i: int) -> str:
    def link(cls, rel, j, text):
        return f'<a class="{cls}" rel="{rel}" href="{html.escape(pages[j][0])}">{text}</a>'
    prev = link("prev", "prev", i - 1, f"&larr; {html.escape(pages[i - 1][1])}") if i > 0 else "<span></span>"
    nxt = link("next", "next", i + 1, f"{html.escape(pages[i + 1][1])} &rarr;") if i + 1 < len(pages) else "<span></span>"
    return f'<div class="book-prevnext">{prev}{nxt}</div>'


DIRECTIVE = re.compile(r"^[ \t]*#\|.*(\n|\Z)", re.M)
LANGUAGE = re.compile(r"[\w+#.-]{1,40}")


def for_reading(nb) -> int:
    """Make a notebook a page (in place): nbdev's `#|` directive lines leave the code cells; a code cell left with
    no code and no output (only directives or %matplotlib) goes, one with output keeps the output only; JavaScript
    outputs go (a page runs no notebook code), and so does a language name that is not a name. Returns how many
    cells were dropped."""
    info = nb.metadata.get("language_info", {})
    for key in ("name", "pygments_lexer"):                  # the highlighter writes it into a class attribute
        if key in info and not LANGUAGE.fullmatch(str(info[key])):
            info[key] = "text"
    keep = []
    for c in nb.cells:
        if c.cell_type == "code":
            if "magics_language" in c.metadata and not LANGUAGE.fullmatch(str(c.metadata.magics_language)):
                c.metadata["magics_language"] = "text"
            c.source = DIRECTIVE.sub("", c.source)
            for o in c.get("outputs", []):
                o.get("data", {}).pop("application/javascript", None)
            c.outputs = [o for o in c.get("outputs", []) if o.get("output_type") in ("stream", "error") or o.get("data")]
            code = [l for l in c.source.splitlines() if l.strip() and not l.startswith("%matplotlib")]
            if not code:
                if not c.outputs:
                    continue
                c.source = ""
                c.metadata.setdefault("transient", {})["remove_source"] = True
        keep.append(c)
    dropped = len(nb.cells) - len(keep)
    nb.cells = keep
    return dropped


_LINE = re.compile(r'<span id="L-\d+">( *)(.*?)\n?</span>(?=<span id="L-|</pre>)', re.S)
_PYGMENTS_TAG = re.compile(r'</?(?:div|pre|span)(?: (?:class|id)="[\w .-]*")*>')


def code_lines(highlighted: str) -> str:
    """Pygments' code, one block per source line (the highlighter marks them: linespans). Lines never wrap
    (book.css: a line wider than its block scrolls inside it); a line of its own lets the browser check
    (site/check_pages.py) measure each one. Pygments escapes the code it colours, so its output is only <div>,
    <pre> and <span> with a class; anything else (a notebook's language name can reach the class attribute)
    sends the code through the allow-list instead, as nbconvert's clean_html would, at 100x the cost."""
    if "<" in _PYGMENTS_TAG.sub("", highlighted):
        highlighted = sanitize.clean(highlighted)
    return _LINE.sub(lambda m: f'<span class="code-line">{m[1]}{m[2]}</span>', highlighted)


def local_links(page: str) -> str:
    "Links between notebooks become links between pages; ../figures/ is copied next to the pages."
    page = re.sub(r'href="(?:\./)?([\w.-]+)\.ipynb(#[^"]*)?"', lambda m: f'href="{m[1]}.html{m[2] or ""}"', page)
    return page.replace('src="../figures/', 'src="figures/').replace('href="../figures/', 'href="figures/')


def exporter() -> HTMLExporter:
    c = Config()
    c.HTMLExporter.extra_template_basedirs = [str(HERE / "templates")]
    c.HTMLExporter.template_name = "book"
    c.HTMLExporter.exclude_input_prompt = True
    c.HTMLExporter.exclude_output_prompt = True
    c.HTMLExporter.mathjax_url = f"_static/mathjax/MathJax.js?config={MATHJAX_CONFIG}"
    c.HTMLExporter.filters = {"book_clean": sanitize.clean, "book_code_lines": code_lines}
    c.Highlight2HTML.extra_formatter_options = {"linespans": "L"}
    c.ExtractOutputPreprocessor.enabled = True
    c.ExtractOutputPreprocessor.output_filename_template = "{cell_index}_{index}{extension}"
    return HTMLExporter(config=c)


def copy_static(out: Path):
    "The book's stylesheet, the figures, and MathJax from its local install (no network)."
    static = out / "_static"
    static.mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "book.css", static / "book.css")
    if (ROOT / "figures").is_dir():
        shutil.copytree(ROOT / "figures", out / "figures", dirs_exist_ok=True)
    try:
        import jupyter_server_mathjax
    except ImportError:
        print("warning: jupyter-server-mathjax is not installed; math will show as TeX source", file=sys.stderr)
        return
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (static / "mathjax" / "MathJax.js").exists():
        shutil.copytree(src, static / "mathjax", ignore=shutil.ignore_patterns("localization"), dirs_exist_ok=True)


def check_out(out: Path) -> Path:
    """The folder the pages go to, resolved; BuildError if it is a file, a folder we cannot write, the repository,
    one of its source folders (or inside one: --out figures/x would copy figures/ into itself), or holds them."""
    o = Path(out).expanduser().resolve()
    again = "; give a new folder for the pages (e.g. --out _site)"
    if o.exists() and not o.is_dir():
        raise BuildError(f"--out {out}: is a file{again}")
    if o == ROOT or ROOT.is_relative_to(o):
        raise BuildError(f"--out {out}: is {'the repository root' if o == ROOT else 'a folder holding the repository'}{again}")
    for name in SOURCES:
        src = (ROOT / name).resolve()
        if o.is_relative_to(src) or src.is_relative_to(o):
            where = "is" if o == src else "is inside" if o.is_relative_to(src) else "holds"
            raise BuildError(f"--out {out}: {where} the book's source folder {name}/{again}")
    probe = o
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise BuildError(f"--out {out}: {probe} is a file, not a folder{again}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise BuildError(f"--out {out}: {'it' if probe == o else probe} is not writable{again}")
    return o


def read_notebook(p: Path):
    "A notebook, read and checked against nbformat's schema; BuildError naming it if it is missing or broken."
    if not p.exists():
        raise BuildError(f"{p}: no such notebook")
    try:
        nb = nbformat.read(p, as_version=4)
        nbformat.validate(nb)
    except Exception as e:                       # JSON, schema, encoding, a folder: all say "not a notebook"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BuildError(f"{p}: not a notebook nbformat can read ({reason[:160]})") from None
    return nb


def build(out: Path, notebooks: list[Path] | None = None, quiet=False) -> list[Path]:
    """Write one HTML page per notebook into out: all of the book's by default, or the notebooks named (a notebook
    outside notebooks/ gets a page too, listed after the book's). Every page's table of contents lists the book.
    Checks out and reads every notebook before writing anything (BuildError). Returns the pages written."""
    out = check_out(out)
    order = book_order(ROOT / "notebooks")
    named = [Path(n) for n in notebooks or []]
    known = {p.resolve() for p in order}
    order += list({n.resolve(): n for n in named if n.resolve() not in known}.values())   # notebooks outside the book
    wanted = {n.resolve() for n in named} or {p.resolve() for p in order}
    first = sorted(order, key=lambda p: p.resolve() not in wanted)                   # the named first: a typo fails fast
    books = {p: nb for p, nb in sorted(((p, read_notebook(p)) for p in first), key=lambda t: order.index(t[0]))}
    names = [page_name(p) for p in order]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise BuildError(f"two notebooks would write the page {clash[0]}; rename one")
    pages = [(page_name(p), title_of(nb) or p.stem) for p, nb in books.items()]
    out.mkdir(parents=True, exist_ok=True)
    copy_static(out)
    ex, written = exporter(), []
    for i, p in enumerate(order):
        if p.resolve() not in wanted:
            continue
        nb = books[p]
        n_widgets = widgets.snapshot_outputs(nb)
        for_reading(nb)
        files_dir = p.stem + "_files"
        source = p.resolve().relative_to(ROOT) if p.resolve().is_relative_to(ROOT) else p.name
        resources = {"unique_key": p.stem, "output_files_dir": files_dir,
                     "metadata": {"name": pages[i][1]},
                     "book": {"toc": toc_html(pages, pages[i][0]), "menu": toc_menu_html(pages, pages[i][0]),
                              "prevnext": prev_next_html(pages, i),
                              "source": html.escape(str(source))}}
        body, res = ex.from_notebook_node(nb, resources=resources)
        if res.get("outputs"):
            (out / files_dir).mkdir(exist_ok=True)
        for name, data in res.get("outputs", {}).items():
            (out / name).write_bytes(data)
        (out / pages[i][0]).write_text(local_links(body), encoding="utf-8")
        written.append(out / pages[i][0])
        if not quiet:
            print(f"{pages[i][0]:34s} {len(res.get('outputs', {})):3d} images  {n_widgets:2d} widgets")
    return written


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "_site"), help="output folder (default: _site)")
    ap.add_argument("notebooks", nargs="*", help="only these notebooks (default: the whole book)")
    a = ap.parse_args(argv)
    try:
        written = build(Path(a.out), a.notebooks or None)
    except (BuildError, OSError) as e:
        print(f"site/build.py: error: {e}", file=sys.stderr)
        return 1
    print(f"{len(written)} pages in {a.out}; open {Path(a.out) / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
