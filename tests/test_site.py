"""The rendered book (`make site`, site/build.py): one page per notebook in book order, pages that link to each
other and to nothing missing, every chapter's figures on its page, math and widgets drawn without the network."""
import importlib.util, re, sys
from html.parser import HTMLParser
from pathlib import Path

import nbformat, pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("qwen3_book_build", ROOT / "site" / "build.py")
build = importlib.util.module_from_spec(_spec); sys.modules["qwen3_book_build"] = build; _spec.loader.exec_module(build)

ORDER = build.book_order(ROOT / "notebooks")


class Tags(HTMLParser):
    "Every tag with its attributes, and for each cell (id='cell-id=...') the <img> sources inside it."
    def __init__(self):
        super().__init__()
        self.tags, self.cell_imgs, self._cells = [], {}, []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if tag == "div":
            cid = (a.get("id") or "")
            self._cells.append(cid[len("cell-id="):] if cid.startswith("cell-id=") else None)
            if self._cells[-1]:
                self.cell_imgs[self._cells[-1]] = []
        if tag == "img":
            for cid in self._cells:
                if cid:
                    self.cell_imgs[cid].append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag == "div" and self._cells:
            self._cells.pop()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    written = build.build(out, quiet=True)
    pages = {}
    for p in written:
        t = Tags(); t.feed(p.read_text(encoding="utf-8")); pages[p.name] = (p.read_text(encoding="utf-8"), t)
    return out, pages


def test_one_page_per_notebook_in_book_order(site):
    "Every page has the whole table of contents, in book order: index, 00, 01, ..."
    out, pages = site
    names = [build.page_name(p) for p in ORDER]
    assert names[0] == "index.html" and set(pages) == set(names)
    assert names[1:] == sorted(names[1:])                       # 00_..., 01_..., ..., 10b_..., solutions
    for n, (text, t) in pages.items():
        toc = re.search(r'<nav class="book-toc">.*?</nav>', text, re.S)[0]
        assert re.findall(r'<li[^>]*><a href="([^"]+)"', toc) == names, n


def test_previous_and_next_links_walk_the_book(site):
    out, pages = site
    names = [build.page_name(p) for p in ORDER]
    for i, n in enumerate(names):
        tags = pages[n][1].tags
        prev = {a["href"] for tag, a in tags if tag == "a" and a.get("rel") == "prev"}
        nxt = {a["href"] for tag, a in tags if tag == "a" and a.get("rel") == "next"}
        assert prev == ({names[i - 1]} if i > 0 else set()), n
        assert nxt == ({names[i + 1]} if i + 1 < len(names) else set()), n


def test_every_local_link_and_source_exists_and_nothing_comes_from_the_web(site):
    out, pages = site
    for n, (text, t) in pages.items():
        for tag, a in t.tags:
            for attr in ("href", "src"):
                url = a.get(attr)
                if url is None or url.startswith(("#", "mailto:", "data:")):
                    continue
                if url.startswith(("http://", "https://", "//")):
                    assert tag == "a", f"{n}: <{tag} {attr}={url}> loads from the web"
                    continue
                path = url.split("#")[0].split("?")[0]
                assert not path.endswith(".ipynb"), f"{n}: link to a notebook, not a page: {url}"
                assert (out / path).is_file(), f"{n}: {url} does not exist"


def test_every_chapter_shows_its_figures(site):
    "Each figures/*.png is written by one chapter, and that chapter's page shows an image in the cell that writes it."
    out, pages = site
    written = {}
    for p in ORDER:
        for cell in nbformat.read(p, as_version=4).cells:
            for fig in re.findall(r'savefig\(\s*["\']\.\./figures/([\w.-]+\.png)', cell.source):
                written[fig] = (p, cell.id)
    on_disk = {f.name for f in (ROOT / "figures").glob("*.png")}
    assert on_disk <= set(written), f"figures no chapter writes: {sorted(on_disk - set(written))}"
    for fig, (p, cid) in written.items():
        imgs = pages[build.page_name(p)][1].cell_imgs.get(cid, [])
        assert imgs, f"{p.name} cell {cid} writes {fig} but its stored output shows no image (run make book)"
        for src in imgs:
            if not src.startswith("data:"):
                assert (out / src).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src


def test_math_is_typeset_by_a_local_mathjax(site):
    out, pages = site
    assert (out / "_static/mathjax/MathJax.js").is_file()
    text, t = pages["01_rmsnorm.html"]
    assert "$" in text or "\\(" in text                       # the TeX is on the page for MathJax to typeset
    assert any(tag == "script" and a.get("src", "").startswith("_static/mathjax/MathJax.js") for tag, a in t.tags)


def test_widgets_are_drawn_from_their_stored_state(site):
    "Every widget a notebook shows is drawn on its page from the state `make book` stored."
    out, pages = site
    shown = 0
    for p in ORDER:
        nb = nbformat.read(p, as_version=4)
        views = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        text = pages[build.page_name(p)][0]
        assert text.count('class="w-snapshot"') == len(views), p.name
        assert "widget state not stored" not in text, f"{p.name}: a widget without stored state (run make book)"
        assert "application/vnd.jupyter.widget" not in text, p.name
        shown += len(views)
    assert shown >= 3                                         # the token viewer, the stepper, the calculator


def test_snapshot_of_a_slider_and_an_interact():
    widgets = build.widgets
    state = {"a": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_b", "IPY_MODEL_c", "IPY_MODEL_d"],
                                                         "_dom_classes": ["widget-interact"]}},
             "b": {"model_name": "IntSliderModel", "state": {"description": "length", "min": 1024, "max": 40960,
                                                              "step": 1024, "value": 8192}},
             "c": {"model_name": "DropdownModel", "state": {"description": "dtype", "index": 1,
                                                             "_options_labels": ["bfloat16", "float32"]}},
             "d": {"model_name": "OutputModel", "state": {"outputs": [
                 {"output_type": "display_data", "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}}]}}}
    h = widgets.render("a", state)
    assert 'type="range"' in h and 'value="8192"' in h and ">length<" in h and "8192<" in h
    assert "<option selected>float32</option>" in h and "<option>bfloat16</option>" in h
    assert '<img src="data:image/png;base64,iVBORw0KGgo=">' in h
    assert "widget state not stored" in widgets.render("missing", state)
