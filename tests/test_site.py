"""The rendered book (`make site`, site/build.py): one page per notebook in book order, pages that link to each
other and to nothing missing, every chapter's figures on its page, math and widgets drawn without the network."""
import html, importlib.util, re, sys
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
        menu = re.search(r'<details class="book-menu">.*?</details>', text, re.S)[0]       # narrow windows' copy
        assert re.findall(r'<li[^>]*><a href="([^"]+)"', menu) == names, n
        assert f'<li class="current"><a href="{n}">' in menu and " open" not in menu.split(">")[0], n


def test_on_a_phone_the_page_opens_with_its_title_not_the_table_of_contents(site):
    """Below 900 px the table of contents beside the page is not drawn; a closed <details> ("contents") above the
    page holds it, so the title is on the first screen (site/check_pages.py measures it in a browser)."""
    out, pages = site
    css = (out / "_static/book.css").read_text()
    wide, narrow = css.split("@media (max-width: 900px)")
    assert re.search(r"^\.book-menu \{ display: none; \}", wide, re.M)
    assert re.search(r"\.book-toc \{ display: none; \}", narrow) and re.search(r"\.book-menu \{ display: block;", narrow)
    for n, (text, t) in pages.items():
        main = text[text.index('<main class="book-page">'):]
        assert main.index('<details class="book-menu">') < main.index("<h1"), n


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
    box = {"t": {"model_name": "TextModel", "state": {"value": "", "placeholder": "Say something, then Enter"}},
           "n": {"model_name": "TextModel", "state": {"value": "hi", "placeholder": "\u200b"}}}
    assert 'placeholder="Say something, then Enter"' in widgets.render("t", box)
    assert "placeholder" not in widgets.render("n", box) and 'value="hi"' in widgets.render("n", box)
    assert '<img src="data:image/png;base64,iVBORw0KGgo=">' in h
    assert "widget state not stored" in widgets.render("missing", state)


# ---- a page reads like a book page --------------------------------------------------------------------------

def code_text(page: str) -> list[str]:
    "The code a page shows, one string per code cell, as a reader sees it (tags dropped, entities decoded)."
    cells = re.findall(r'<div class="jp-CodeMirrorEditor.*?</pre>', page, re.S)
    return [html.unescape(re.sub(r"<[^>]+>", "", c.replace('<span class="code-line"', '\n<span class="code-line"')))
            for c in cells]


def test_no_nbdev_directive_is_shown(site):
    "`#| export`, `#| default_exp x`, `#| export x` are for nbdev, not the reader: no code cell on a page shows one."
    out, pages = site
    shown = 0
    for n, (text, t) in pages.items():
        for code in code_text(text):
            shown += 1
            assert not re.search(r"^\s*#\|", code, re.M), f"{n}: {code[:80]!r}"
    assert shown > 100


def test_code_never_wraps_and_scrolls_inside_its_block(site):
    """A code line, output line or code block in prose is drawn as written: a line wider than its block scrolls
    inside the block (white-space: pre; overflow-x: auto), never the page, and is never broken mid-string.
    Each source line is a block of its own (the browser check measures them), with no inline style."""
    out, pages = site
    css = (out / "_static/book.css").read_text()
    rule = re.search(r"\.book \.jp-InputArea-editor pre,[^{]*\.jp-OutputArea-output pre[^{]*"
                     r"\.jp-RenderedHTMLCommon pre[^{]*\{([^}]*)\}", css)
    assert rule and "white-space: pre;" in rule[1] and "overflow-x: auto" in rule[1]
    assert "pre-wrap" not in css and "anywhere" not in css
    text = pages["08e_batching.html"][0]
    assert '<span class="code-line">' in text and '<span class="code-line" ' not in text
    longest = max(len(l) for n, (text, t) in pages.items() for c in code_text(text) for l in c.splitlines())
    assert longest > 0                                        # (the browser check prints it and what scrolls)


def test_a_wide_screen_gives_code_its_width_and_tables_scroll_inside_their_block(site):
    """The page is up to 84rem wide (about 150 columns of code beside the table of contents at 1920 px; it was
    58rem, 105 columns) while prose keeps a 54rem measure; a table wraps its cells' text first, then scrolls
    inside its own block (display: block; max-width: 100%), so no table makes a phone's page wider than the screen."""
    out, pages = site
    css = (out / "_static/book.css").read_text()
    assert re.search(r"main\.book-page \{[^}]*max-width: 84rem", css)
    assert re.search(r"\.jp-RenderedMarkdown > :is\(p, [^)]*\) \{ max-width: 54rem; \}", css)
    table = re.search(r"\.book \.jp-RenderedHTMLCommon table, \.w-html table \{([^}]*)\}", css)[1]
    assert all(d in table for d in ("display: block", "max-width: 100%", "overflow-x: auto", "width: fit-content"))


def test_figures_fit_a_desktop_window_at_their_natural_width(site):
    """An output image may be wider than the text column, up to the window's edge less the table of contents
    (100vw - 21rem): on a 1920-pixel desktop no figure of the book is shrunk below its natural width."""
    out, pages = site
    css = (out / "_static/book.css").read_text()
    assert "max-width: calc(100vw - 17rem - 4rem)" in css
    assert not re.search(r"jp-RenderedImage img[^{]*\{[^}]*max-width: 100%", css.split("@media")[0])
    for n, (text, t) in pages.items():
        for tag, a in t.tags:
            src = a.get("src", "")
            if tag == "img" and src.endswith(".png"):
                width = int.from_bytes((out / src).read_bytes()[16:20], "big")
                assert width <= 1920 - 21 * 16, f"{n}: {src} is {width} px wide"


def test_no_request_that_fails(site):
    """What made Chromium log errors: MathJax's blank font at url('about:blank') (its declaration is removed at
    startup), TeX fonts for the hidden MathML copy (it takes the page's font), the favicon (a data: URL)."""
    out, pages = site
    text, t = pages["01_rmsnorm.html"]
    assert ("link", {"rel": "icon", "href": "data:,"}) in t.tags
    assert 'delete MathJax.OutputJax["HTML-CSS"].config.styles["@font-face"]' in text
    assert ".MJX_Assistive_MathML" in (out / "_static/book.css").read_text()
    assert "STIX-Web" in text and list((out / "_static/mathjax/fonts/HTML-CSS/STIX-Web/woff").glob("*.woff"))
    for n, (text, t) in pages.items():
        assert not any(tag in ("iframe", "object", "embed") for tag, a in t.tags), n


def test_the_book_looks_the_same_through_the_allow_list():
    "Every markdown cell, HTML output and widget snapshot of the book passes site/sanitize.py unchanged."
    from nbconvert.filters.markdown_mistune import markdown2html_mistune
    n = 0
    for p in ORDER:
        nb = nbformat.read(p, as_version=4)
        build.widgets.snapshot_outputs(nb)
        frags = [markdown2html_mistune(c.source) for c in nb.cells if c.cell_type == "markdown"]
        for c in nb.cells:
            for o in c.get("outputs", []):
                d = o.get("data", {})
                frags += [d["text/html"]] if "text/html" in d else []
                frags += [markdown2html_mistune(d["text/markdown"])] if "text/markdown" in d else []
        for f in frags:
            assert events(build.sanitize.clean(f)) == events(f), f"{p.name}: {f[:200]}"
            n += 1
    assert n > 100


def events(fragment: str) -> list:
    "An HTML fragment as parse events (tags with sorted attributes, text), for comparing markup written two ways."
    class E(HTMLParser):
        def __init__(self):
            super().__init__(); self.ev = []
        def handle_starttag(self, tag, attrs):
            self.ev.append(("<", tag, tuple(sorted((k, (v or "").rstrip(";")) for k, v in attrs))))
        handle_startendtag = handle_starttag
        def handle_endtag(self, tag):
            self.ev.append((">", tag))
        def handle_data(self, d):
            if d.strip():
                self.ev.append(("t", d))
    e = E(); e.feed(fragment); e.close()
    return [x for x in e.ev if x[1] != "tbody"]               # the parser adds <tbody> where the source left it out


# ---- widget snapshots show what the widget shows ------------------------------------------------------------

def stored_values(state: dict, model_id: str, seen=()) -> list[str]:
    "The non-empty values of the HTML widgets a view shows (itself and its children)."
    m = state.get(model_id.removeprefix("IPY_MODEL_"))
    if m is None or model_id in seen:
        return []
    s = m.get("state", {})
    vals = [s["value"]] if m.get("model_name") in ("HTMLModel", "HTMLMathModel") and s.get("value") else []
    for c in s.get("children", []):
        vals += stored_values(state, c, (*seen, model_id))
    return vals


def test_every_html_child_of_a_snapshot_is_on_the_page(site):
    "What an HTML child holds (08b's stepper: the text so far and the table of the next token's candidates) shows."
    out, pages = site
    for p in ORDER:
        nb = nbformat.read(p, as_version=4)
        state = build.widgets.widget_state(nb)
        text = pages[build.page_name(p)][0]
        for c in nb.cells:
            for o in c.get("outputs", []):
                view = o.get("data", {}).get("application/vnd.jupyter.widget-view+json")
                for v in stored_values(state, view["model_id"]) if view else []:
                    words = html.unescape(re.sub(r"<[^>]+>", " ", v)).split()
                    assert all(w in html.unescape(text) for w in words[:20]), f"{p.name}: {v[:80]}"


def test_a_stepper_snapshot_draws_its_table(tmp_path):
    "A VBox of a button, an HTML text and an HTML table (08b's stepper) is drawn with all three on the page."
    table = "<table><tr><th>token</th><th>id</th><th>p</th></tr><tr><td>' Paris'</td><td>12095</td><td>0.412</td></tr></table>"
    state = {"v": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_b", "IPY_MODEL_t", "IPY_MODEL_h"]}},
             "b": {"model_name": "ButtonModel", "state": {"description": "next token"}},
             "t": {"model_name": "HTMLModel", "state": {"value": "<pre>The capital of France is Paris</pre>"}},
             "h": {"model_name": "HTMLModel", "state": {"value": table}}}
    nb = notebook(tmp_path / "stepper.ipynb", code_outputs=[
        {"output_type": "display_data", "metadata": {},
         "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "v", "version_major": 2, "version_minor": 0},
                  "text/plain": "VBox(...)"}}], widget_state=state)
    page = build_one(tmp_path, nb)
    snap = re.search(r'<div class="w-snapshot".*?</div></div>\s*</div>', page, re.S)[0]
    assert ">next token</button>" in snap and "The capital of France is Paris" in snap
    assert "<th>token</th>" in snap and "<td>12095</td>" in snap and "<td>0.412</td>" in snap


# ---- the builder is hard to misuse ---------------------------------------------------------------------------

def notebook(path: Path, markdown="# A page", code="print(1)", code_outputs=(), widget_state=None, extra_cells=()):
    "A small notebook written into the test's folder."
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(markdown), nbformat.v4.new_code_cell(code), *extra_cells]
    nb.cells[1].outputs = [nbformat.from_dict(o) for o in code_outputs]
    if widget_state is not None:
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
            "state": widget_state, "version_major": 2, "version_minor": 0}}
    nbformat.write(nb, path)
    return path


def build_one(tmp_path: Path, nb: Path) -> str:
    "Build the page of one notebook (the book's own are listed in its table of contents, not built)."
    out = tmp_path / "out"
    (page,) = build.build(out, [nb], quiet=True)
    return page.read_text(encoding="utf-8")


def run_main(capsys, *args):
    rc = build.main(list(args))
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("where", ["file", "root", "notebooks", "figures", "inside_figures", "site", "tests",
                                   "benchmarks", "qwen3_lib", "above_root"])
def test_out_that_must_not_be_written_is_refused_in_one_line(tmp_path, capsys, where):
    out = {"file": tmp_path / "a_file", "root": ROOT, "notebooks": ROOT / "notebooks", "figures": ROOT / "figures",
           "inside_figures": ROOT / "figures" / "site", "site": ROOT / "site", "tests": ROOT / "tests",
           "benchmarks": ROOT / "benchmarks", "qwen3_lib": ROOT / "qwen3_lib", "above_root": ROOT.parent}[where]
    (tmp_path / "a_file").write_text("keep me")
    rc, err = run_main(capsys, "--out", str(out))
    assert rc == 1 and err.count("\n") == 1 and "Traceback" not in err and f"--out {out}" in err, err
    for written in ("_static", "index.html", "00_overview.html"):
        assert not (out / written).exists() or out.is_file(), written
    assert not (ROOT / "figures" / "site").exists() and not (ROOT / "figures" / "figures").exists()
    assert (tmp_path / "a_file").read_text() == "keep me"


def test_out_in_a_folder_that_cannot_be_written_is_refused(tmp_path, capsys, monkeypatch):
    "The tests run as root, who may write anywhere: the permission check is given a folder it may not write."
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = build.os.access
    monkeypatch.setattr(build.os, "access", lambda p, mode: False if Path(p) == locked else real_access(p, mode))
    for out in (locked, locked / "new" / "site"):
        rc, err = run_main(capsys, "--out", str(out))
        assert rc == 1 and "not writable" in err and err.count("\n") == 1, err
    assert list(locked.iterdir()) == []


def test_a_notebook_that_is_missing_or_broken_is_an_error_naming_it(tmp_path, capsys):
    broken = tmp_path / "broken.ipynb"
    broken.write_text('{"cells": [')
    not_a_notebook = tmp_path / "data.ipynb"
    not_a_notebook.write_text('{"hello": 1}')
    for nb in (tmp_path / "missing.ipynb", broken, not_a_notebook, tmp_path):
        rc, err = run_main(capsys, "--out", str(tmp_path / "out"), str(nb))
        assert rc == 1 and str(nb) in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_a_page_runs_no_code_the_notebook_stored(tmp_path):
    """HTML and JavaScript from a notebook pass the allow-list: no <script> but MathJax's, no on* attribute, no
    javascript: URL, no <iframe>/<style>/<form> — in markdown, HTML and markdown outputs, raw cells, widget state,
    and the language name the code highlighter writes into a class attribute."""
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)><iframe src="javascript:alert(2)"></iframe>' \
           '<a href="javascript:alert(3)">link</a><style>body{display:none}</style><form action="http://x">' \
           '<div onclick="alert(4)" style="position:fixed;background:url(http://x/t.png)">text</div>'
    state = {"h": {"model_name": "HTMLModel", "state": {"value": evil}}}
    nb = notebook(tmp_path / "hostile.ipynb", markdown=f"# Hostile </title><script>alert(5)</script>\n\n{evil}\n\n"
                  "[md link](javascript:alert(6))", code_outputs=[
        {"output_type": "display_data", "metadata": {}, "data": {"text/html": evil, "text/plain": "x"}},
        {"output_type": "display_data", "metadata": {}, "data": {"application/javascript": "alert(7)"}},
        {"output_type": "display_data", "metadata": {}, "data": {"application/javascript": "alert(8)", "text/plain": "js"}},
        {"output_type": "display_data", "metadata": {}, "data": {"text/markdown": evil}},
        {"output_type": "display_data", "metadata": {}, "data": {"text/vnd.mermaid": evil}},
        {"output_type": "display_data", "metadata": {}, "data": {
            "application/vnd.jupyter.widget-view+json": {"model_id": "h", "version_major": 2, "version_minor": 0}}}],
        widget_state=state, extra_cells=[nbformat.v4.new_raw_cell(evil, metadata={"raw_mimetype": "text/html"}),
                                         nbformat.v4.new_code_cell("x = '<b>'", metadata={"magics_language": evil})])
    book = nbformat.read(nb, as_version=4)
    book.metadata["language_info"] = {"name": evil, "pygments_lexer": evil}    # reaches the code's class attribute
    nbformat.write(book, nb)
    page = build_one(tmp_path, nb)
    t = Tags(); t.feed(page)
    scripts = [a for tag, a in t.tags if tag == "script"]
    assert scripts == [{"type": "text/x-mathjax-config"}, {"src": scripts[1].get("src")}]
    assert scripts[1]["src"].startswith("_static/mathjax/MathJax.js")
    main = page[page.index('<main class="book-page">'):]
    t = Tags(); t.feed(main)
    assert not {tag for tag, a in t.tags} & {"script", "iframe", "style", "form", "object", "embed"}
    for tag, a in t.tags:
        assert not [k for k in a if k.startswith("on")], (tag, a)
        assert not any("javascript:" in (v or "").lower() or "url(" in (v or "") or "position" in (v or "")
                       for v in a.values()), (tag, a)
    assert "alert(7)" not in page and "alert(8)" not in page and ">js</pre>" in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in main or '&lt;script&gt;alert("x")&lt;/script&gt;' in main
    assert "<title>Hostile &lt;/title&gt;&lt;script&gt;alert(5)&lt;/script&gt;</title>" in page


def test_a_cell_of_directives_shows_its_output_only(tmp_path):
    nb = notebook(tmp_path / "directives.ipynb", code="#| export\n#| hide", code_outputs=[
        {"output_type": "stream", "name": "stdout", "text": "what the cell printed\n"}],
        extra_cells=[nbformat.v4.new_code_cell("#| default_exp thing"),
                     nbformat.v4.new_code_cell("#| export\ndef f(x):\n    return x  #| not a directive")])
    page = build_one(tmp_path, nb)
    code = code_text(page)
    assert code and not any(re.match(r"\s*#\|", l) for c in code for l in c.splitlines())
    assert any("def f(x):" in c for c in code) and any("#| not a directive" in c for c in code)
    assert "what the cell printed" in page and "default_exp" not in page and "#| export" not in page


# ---- the browser check's verdicts (site/check_pages.py; the browser itself is not started here) ---------------

_cspec = importlib.util.spec_from_file_location("qwen3_book_check_pages", ROOT / "site" / "check_pages.py")
check_pages = importlib.util.module_from_spec(_cspec); _cspec.loader.exec_module(check_pages)


def measured(**changes):
    "One page's measurements at one window width, as check_pages.MEASURE returns them: a page with no problem."
    r = {"console_errors": [], "failed_requests": [], "broken_links": [], "shrunk": [], "lines": 10, "longest": 80,
         "wrapped": 0, "wrapped_pre": 0, "wrapped_examples": [], "wider": 2, "directives": 0, "clipped": [],
         "scrolling": 2, "doc_width": 390, "window_width": 390, "window_height": 900, "title_top": 120,
         "links": [], "ids": []}
    return {**r, **changes}


@pytest.mark.parametrize("changes, says", [
    ({"doc_width": 555}, "page is 555 px wide in a 390 px window"),     # 10b's tables on a phone, before
    ({"wrapped": 3}, "3 code lines wrap"),
    ({"wrapped_pre": 1}, "1 <pre> blocks wrap"),
    ({"title_top": 1135}, "title at 1135 px, below the first screen"),  # the table of contents first, before
    ({"clipped": ["div.x"]}, "cut off"),
    ({"broken_links": ["a.html#b (no such anchor)"]}, "1 broken links"),
    ({"console_errors": ["x"]}, "1 console errors"),
])
def test_the_browser_check_fails_a_page_that_does_not_fit_a_phone(changes, says):
    assert check_pages.problems(measured()) == []           # lines that scroll inside their block are fine
    assert any(says in p for p in check_pages.problems(measured(**changes)))


def test_the_browser_check_finds_links_to_missing_pages_and_anchors(tmp_path):
    "A link to a missing file or to an id its page lacks is broken; an id is matched as written or percent-decoded."
    (tmp_path / "a.html").write_text("x"); (tmp_path / "b.html").write_text("x"); (tmp_path / "f.png").write_text("x")
    base = "http://127.0.0.1:1/"
    report = {"a.html": measured(links=[base + "b.html#h-%C2%B7-x", base + "b.html#gone", base + "c.html",
                                        base + "f.png", base + "b.html#caf%C3%A9", "https://example.org/#nothing"]),
              "b.html": measured(ids=["h-%C2%B7-x", "café"])}
    assert check_pages.broken_links(report, base, tmp_path) == {
        "a.html": ["b.html#gone (no such anchor)", "c.html (no such file)"], "b.html": []}
