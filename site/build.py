"""Build the book as static HTML pages from the notebooks' stored outputs: `make site`, or

    python site/build.py [--out _site] [NOTEBOOK ...]

Nothing is executed and nothing is downloaded: the pages are the outputs `make book` stored, rendered with
nbconvert; math is typeset in the browser by the MathJax that the PyPI package jupyter-server-mathjax
installs (copied next to the pages, so they read offline too); widgets are drawn once from their stored
state (site/widgets.py). Every page has the table of contents and links to the previous and next chapter.
Open _site/index.html in a browser, or serve the folder (`python -m http.server -d _site`).
"""
import argparse, html, importlib.util, re, shutil, sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter
from traitlets.config import Config

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

def _load(name: str, path: Path):
    "Import a file next to this one under a name of its own (site/ is not a package; 'widgets' is a common name)."
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec); sys.modules[name] = mod; spec.loader.exec_module(mod)
    return mod

widgets = _load("qwen3_book_widgets", HERE / "widgets.py")

MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full,Safe"


def book_order(nb_dir: Path) -> list[Path]:
    "index first, then the chapters by name (00_..., 01_..., 10b_...), then the solutions."
    chapters = sorted(p for p in nb_dir.glob("[0-9][0-9]*.ipynb"))
    extra = [nb_dir / "solutions.ipynb"] if (nb_dir / "solutions.ipynb").exists() else []
    return [nb_dir / "index.ipynb", *chapters, *extra]


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


def toc_html(pages, current: str) -> str:
    items = []
    for name, title in pages:
        cls = ' class="current"' if name == current else ""
        items.append(f'<li{cls}><a href="{name}">{html.escape(title)}</a></li>')
    return '<nav class="book-toc"><a class="book-home" href="index.html">Qwen3 from Scratch</a><ol>' + "".join(items) + "</ol></nav>"


def prev_next_html(pages, i: int) -> str:
    prev = f'<a class="prev" rel="prev" href="{pages[i - 1][0]}">&larr; {html.escape(pages[i - 1][1])}</a>' if i > 0 else "<span></span>"
    nxt = f'<a class="next" rel="next" href="{pages[i + 1][0]}">{html.escape(pages[i + 1][1])} &rarr;</a>' if i + 1 < len(pages) else "<span></span>"
    return f'<div class="book-prevnext">{prev}{nxt}</div>'


def hide_scaffolding(nb) -> int:
    "Drop code cells a reader of the page does not need: only nbdev directives or %matplotlib, and no output."
    keep = [c for c in nb.cells if not (c.cell_type == "code" and not c.get("outputs") and c.source.strip() and
            all(l.startswith(("#|", "%matplotlib")) for l in c.source.strip().splitlines()))]
    dropped = len(nb.cells) - len(keep)
    nb.cells = keep
    return dropped


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


def build(out: Path, notebooks: list[Path] | None = None, quiet=False) -> list[Path]:
    """Write one HTML page per notebook into out (all of the book's by default; the table of contents always
    lists the whole book). Returns the pages written."""
    nb_dir = ROOT / "notebooks"
    order = book_order(nb_dir)
    books = {p: nbformat.read(p, as_version=4) for p in order}
    pages = [(page_name(p), title_of(nb) or p.stem) for p, nb in books.items()]
    wanted = [Path(n).resolve() for n in notebooks] if notebooks else order
    out.mkdir(parents=True, exist_ok=True)
    copy_static(out)
    ex, written = exporter(), []
    for i, p in enumerate(order):
        if p.resolve() not in wanted:
            continue
        nb = books[p]
        n_widgets = widgets.snapshot_outputs(nb)
        hide_scaffolding(nb)
        files_dir = p.stem + "_files"
        resources = {"unique_key": p.stem, "output_files_dir": files_dir,
                     "metadata": {"name": pages[i][1]},
                     "book": {"toc": toc_html(pages, pages[i][0]), "prevnext": prev_next_html(pages, i),
                              "source": f"notebooks/{p.name}"}}
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
    written = build(Path(a.out), a.notebooks or None)
    print(f"{len(written)} pages in {a.out}; open {Path(a.out) / 'index.html'}")


if __name__ == "__main__":
    main()
