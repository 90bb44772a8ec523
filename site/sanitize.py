"""The allow-list for HTML on the book's pages: what a notebook's markdown and outputs may put on a page.

A page shows text a notebook stored, and a notebook can store anything: an HTML output with a `<script>`, a
markdown cell with `<img onerror=...>`, a link to `javascript:`. Everything that came from a notebook as HTML
(markdown cells, text/html and text/markdown outputs, the widget snapshots, raw HTML cells) passes through
`clean` before it reaches the page. bleach (installed with nbconvert) does the parsing; this file only says what
the book's own pages need: text and its markup, headings with their anchors, tables, images, links, the form
controls the widget snapshots draw (site/widgets.py), and TeX for MathJax (plain text, so nothing to allow).
Anything else is shown as text (a `<script>` tag reads as `<script>` on the page) or dropped (attributes).
nbconvert's own `clean_html` is too narrow for a book (it has no <p>, <h1>, <img> or <th>).
"""
import re

import bleach
from bleach.css_sanitizer import CSSSanitizer

TAGS = frozenset({
    # text
    "p", "br", "hr", "span", "div", "pre", "code", "kbd", "samp", "var", "blockquote", "em", "strong", "b", "i", "u",
    "s", "del", "ins", "mark", "small", "sub", "sup", "abbr", "cite", "q", "details", "summary",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "img", "figure", "figcaption",
    # lists and tables
    "ul", "ol", "li", "dl", "dt", "dd",
    "table", "caption", "colgroup", "col", "thead", "tbody", "tfoot", "tr", "th", "td",
    # the widget snapshots' controls (drawn read-only; nothing on the page runs them)
    "label", "input", "textarea", "select", "option", "button", "progress",
})

_COMMON = {"class", "id", "title", "style", "role", "aria-label", "aria-hidden", "lang", "dir"}
ATTRIBUTES = {
    "a": {"href", "name", "rel"},
    "img": {"src", "alt", "width", "height"},
    "th": {"colspan", "rowspan", "align", "scope"}, "td": {"colspan", "rowspan", "align"},
    "col": {"span"}, "colgroup": {"span"}, "ol": {"start", "type"}, "li": {"value"},
    "div": {"data-model-id", "data-mime-type"},
    "input": {"type", "value", "min", "max", "step", "readonly", "checked", "disabled", "placeholder"},
    "textarea": {"rows", "readonly", "placeholder"}, "option": {"selected"}, "select": {"disabled"}, "button": {"type"},
    "progress": {"max", "value"},
}
# Inline styles, for presentation only: a markdown table's column alignment, the token viewer's coloured spans
# (07b). No position, display or z-index (an output must not cover the page), and no url() (nothing loaded).
CSS = CSSSanitizer(allowed_css_properties=[
    "text-align", "vertical-align", "white-space", "color", "background", "background-color", "font-family",
    "font-size", "font-style", "font-weight", "line-height", "text-decoration", "padding", "padding-left",
    "padding-right", "padding-top", "padding-bottom", "margin", "margin-left", "margin-right", "margin-top",
    "margin-bottom", "border", "border-bottom", "border-top", "border-left", "border-right", "border-radius",
    "border-collapse", "width", "max-width", "min-width", "height"])
# Images may be inline PNG/JPEG/GIF (widget snapshots, Output widgets); links may go to the web or by e-mail.
_DATA_IMAGE = re.compile(r"data:image/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=\s]*\Z")
_URL_SCHEME = re.compile(r"\s*([A-Za-z][A-Za-z0-9+.-]*):")


def _allowed(tag: str, name: str, value: str) -> bool:
    if name in _COMMON or name in ATTRIBUTES.get(tag, ()):
        if name in ("href", "src"):
            m = _URL_SCHEME.match(value)
            if m is None:
                return True                                    # relative: a page, a figure, an anchor
            scheme = m[1].lower()
            if tag == "img" and name == "src" and scheme == "data":
                return bool(_DATA_IMAGE.match(value.strip()))
            return scheme in ("http", "https", "mailto")
        if name == "style":                                    # escapes (\\75rl) could spell what we refuse
            v = value.lower()
            return "url(" not in v and "\\" not in v and "expression" not in v and "image-set" not in v
        return True
    return False


_cleaner = bleach.Cleaner(tags=TAGS, attributes=_allowed, protocols={"http", "https", "mailto", "data"},
                          css_sanitizer=CSS, strip=False, strip_comments=True)


def clean(fragment) -> str:
    "An HTML fragment with everything the allow-list does not name escaped (tags) or dropped (attributes)."
    if isinstance(fragment, bytes):
        fragment = fragment.decode("utf-8", "replace")
    return _cleaner.clean("" if fragment is None else str(fragment))
