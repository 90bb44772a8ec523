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

_COMMON = {"class", "id", "title", "role", "aria-label", "aria-hidden", "lang", "dir"}
ATTRIBUTES = {
    "a": {"href", "name", "rel"},
    "img": {"src", "alt", "width", "height"},
    "th": {"colspan", "rowspan", "align", "style", "scope"}, "td": {"colspan", "rowspan", "align", "style"},
    "col": {"span"}, "colgroup": {"span"}, "ol": {"start", "type"}, "li": {"value"},
    "div": {"data-model-id", "data-mime-type"},
    "input": {"type", "value", "min", "max", "step", "readonly", "checked", "disabled"},
    "textarea": {"rows", "readonly"}, "option": {"selected"}, "select": {"disabled"}, "button": {"type"},
    "progress": {"max", "value"},
}
# A markdown table's column alignment is the only style the book's pages use.
CSS = CSSSanitizer(allowed_css_properties=["text-align"])
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
        return True
    return False


_cleaner = bleach.Cleaner(tags=TAGS, attributes=_allowed, protocols={"http", "https", "mailto", "data"},
                          css_sanitizer=CSS, strip=False, strip_comments=True)


def clean(fragment) -> str:
    "An HTML fragment with everything the allow-list does not name escaped (tags) or dropped (attributes)."
    if isinstance(fragment, bytes):
        fragment = fragment.decode("utf-8", "replace")
    return _cleaner.clean("" if fragment is None else str(fragment))
