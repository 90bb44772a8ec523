"""Every number a chapter's prose states is one its cells show.

nbval compares a notebook's outputs with its outputs; nothing compares them with the sentences around them. This
module does: it reads each markdown cell's numbers and looks for each one in the same notebook's code and stored
outputs. A number is *supported* when

- a plain number (``151,936``, ``0.42``) appears in a code cell or an output, equal or rounded to the digits the
  prose writes (``0.42`` is supported by ``0.4213``; ``0.4213`` is not supported by ``0.42``);
- a **computed** number -- a ratio (``9.9×``, ``12x``, ``sixteen times``), a percentage (``60 %``), a fraction in
  words (``two thirds``) or a time (``1,750 ms``, ``two minutes``) -- appears in an *output* or in an ``assert``
  line, because typing a constant into code proves nothing about a ratio (``16`` heads does not make int4's error
  sixteen times int8's). Percentages and fractions also match a printed fraction (``0.60``), times a printed time
  in another unit (``131 s`` for "two minutes");
- a number qualified by *about, around, roughly, nearly, almost, approximately, ~, ≈* is within 10 % of one shown;
  one bounded by *over, more than, above, under, less than, below, at least, at most, up to* is on that side of
  one shown and within a factor of two of it;
- or it is a cited constant listed for that notebook in ``tests/data/claims.json`` under ``"cited"`` (a model
  card's, a paper's, a spec's number), with its source.

A paragraph that quotes a time must also say on what machine it was measured ("measured on …", "timed on …" or
"recorded on …"): times differ by machine, and a reader needs to know which one.

What is not read as a claim, and why (kept few):
- headings, numbered-list markers, inline code, fenced code, link targets, HTML tags and LaTeX math: they name
  things (chapter 12, exercise 3, ``head_dim=128``) or define them (:math:`\\sqrt{d}`) rather than state results;
- numbers glued to letters (``int8``, ``13a``, ``Qwen3-0.6B``, ``g32``, ``2nd``) are names;
- numbers right after *chapter, appendix, exercise, section, cell, line, figure, step, version* or a package name
  (``transformers 5.24``), version strings (``0.21.2``), arXiv ids (``2505.09388``) and years (1950-2039);
- word numbers other than in ratios, fractions and times ("two cores", "three jobs" are counts, everywhere in code).

Run ``python tests/claims.py [notebooks...]`` to print every unsupported number; ``tests/test_claims.py`` runs it
over every notebook in ``make test``.
"""
from __future__ import annotations

import json, math, re, sys
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "claims.json"

WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten eleven twelve thirteen "
                                     "fourteen fifteen sixteen seventeen eighteen nineteen twenty".split())}
WORDS.update(thirty=30, forty=40, fifty=50, sixty=60, hundred=100, thousand=1000, a=1, an=1)
DENOMS = {"half": 2, "halves": 2, "third": 3, "thirds": 3, "quarter": 4, "quarters": 4, "fifth": 5, "fifths": 5,
          "tenth": 10, "tenths": 10}
APPROX = r"about|around|roughly|nearly|almost|approximately|some|~|≈|close to"
BOUND_UP = r"over|more than|above|at least|beyond|upwards of"        # the truth is at least the number
BOUND_DOWN = r"under|less than|below|at most|up to|within|fewer than"   # the truth is at most the number
REFERENCE = (r"(?:chapters?|appendix|appendices|exercises?|sections?|cells?|lines?|figures?|steps?|versions?|"
             r"issues?|page|eq\.?|python|pytorch|torch|transformers|peft|gguf|nbdev|safetensors|llama\.cpp|numpy|"
             r"jinja2?|cuda|ipywidgets|matplotlib|jupyterlab|jupyter|tokenizers|vllm|sglang|qwen|qwen2\.5|qwen3|"
             r"llama|gpt-?\d?|v)")
TIME_UNITS = {"ms": 1e-3, "milliseconds": 1e-3, "millisecond": 1e-3, "s": 1.0, "sec": 1.0, "seconds": 1.0,
              "second": 1.0, "min": 60.0, "minutes": 60.0, "minute": 60.0, "hours": 3600.0, "hour": 3600.0,
              "µs": 1e-6, "us": 1e-6}
MACHINE = re.compile(r"\b(measured|timed|recorded) on\b", re.I)

NUMBER = re.compile(r"(?<![\w.$\\])(?<!\w-)(\d{1,3}(?:,\d{3})+(?!,?\d)|\d+)(\.\d+)?(?![\w.]\d|[\dA-Za-wyz_]|x\w)")
EVIDENCE = re.compile(r"(?<![\w.])(\d+(?:[_,]\d{3})*)(\.\d+)?(?:[eE]([-+]?\d+))?")
POWER = re.compile(r"\b(\d+)\s*\*\*\s*(\d+)\b|\b(\d+)\s*<<\s*(\d+)\b")
COMPARED = (r"(?!the same\b)(?:the|as|more|less|larger|smaller|faster|slower|bigger|fewer|higher|lower|that|what|"
            r"its|their|\w+'s)\b")                     # "nine times the weights", not "three times the same offset"
WORD_RATIO = re.compile(r"\b(" + "|".join(WORDS) + r")(?:[- ](" + "|".join(WORDS) + r"))?\s+(?:times\s+(?="
                        + COMPARED + r")|-fold|fold\b)", re.I)       # "five times over" counts: not a ratio
WORD_FRACTION = re.compile(r"\b(one|two|three|four|five|six|seven|eight|nine|a)[- ](thirds?|quarters?|fifths?|"
                           r"tenths?) of\b", re.I)           # "of": "a third file" is an ordinal
WORD_TIME = re.compile(r"\b(half an?|" + "|".join(k for k in WORDS if k not in ("a", "an")) + r"|a|an)\s+"
                       r"(minutes?|hours?|seconds?|milliseconds?)\b(?<!\ba second)", re.I)   # "a second" also counts


@dataclass
class Claim:
    notebook: str
    cell: int          # index of the markdown cell
    text: str          # the number as written
    value: float
    decimals: int      # digits written after the point: the rounding the prose claims
    kind: str          # plain, ratio, percent, fraction, time
    qualifier: str     # "", approx, up (at least), down (at most)
    sentence: str

    def __str__(self):
        how = self.kind + (f", {self.qualifier}" if self.qualifier else "")
        return f"{self.notebook} cell {self.cell}: {self.text!r} ({how}) in: {self.sentence}"


# ---------------------------------------------------------------------------------------------------------- prose
def _strip_markdown(src: str) -> list[str]:
    "The prose of a markdown cell, as paragraphs and table rows, with what is not a claim blanked out."
    src = re.sub(r"```.*?```", " ", src, flags=re.S)
    src = re.sub(r"\$\$.*?\$\$", " ", src, flags=re.S)
    src = re.sub(r"(?<!\\)\$[^$\n]+\$", " ", src)
    src = re.sub(r"`[^`\n]*`", " CODE ", src)
    src = re.sub(r"\]\([^)\s]*\)", "]", src)                        # link targets
    src = re.sub(r"https?://\S+", " ", src)
    src = re.sub(r"<[^>\n]+>", " ", src)
    blocks, para = [], []
    for line in src.split("\n") + [""]:
        if re.match(r"\s*#", line): line = ""                          # headings
        line = re.sub(r"^\s*(?:\d+[.)]|[-*+])\s+", "", line)           # list markers, numbered exercises
        if line.lstrip().startswith("|") or not line.strip():           # a table row stands alone
            if para: blocks.append(" ".join(para)); para = []
            if line.strip() and not re.fullmatch(r"[\s|:-]+", line): blocks.append(line)
        else: para.append(line)
    out = []
    for text in blocks:
        text = re.sub(r"\b\d+\.\d+\.\d+(?:\.\d+)*\b", " VERSION ", text)  # versions, dotted ids
        text = re.sub(r"\b\d{4}\.\d{4,5}\b", " ARXIV ", text)
        text = re.sub(r"\b[A-Za-z]\w*\s*=\s*(?:\d[\d,.]*\d|\d)(?:(?:,\s*|\s+and\s+|\s+or\s+)(?:\d[\d,.]*\d|\d))*",
                      " SETTING ", text)
        out.append(re.sub(r"[ \t]+", " ", text))                       # "T = 256, 1,024 and 4,096": a setting
    return out


def _sentences(text: str):
    "(start offset, sentence) pairs."
    start = 0
    for m in re.finditer(r"(?<=[.!?:;])\s+(?=[A-Z*(\"'“‘_\[])", text):
        yield start, text[start:m.start()]
        start = m.end()
    yield start, text[start:]


def _qualifier(before: str) -> str:
    before = before.lower()[-24:]
    if re.search(r"(?:^|\W)(?:" + APPROX + r")\s*$", before): return "approx"
    if re.search(r"(?:^|\W)(?:" + BOUND_UP + r")\s*$", before): return "up"
    if re.search(r"(?:^|\W)(?:" + BOUND_DOWN + r")\s*$", before): return "down"
    return ""


def _is_reference(before: str) -> bool:
    "A number that names something: chapter 12, chapters 08a and 09, appendix A5, transformers 5.24, ..."
    low = before.lower()
    if re.search(r"(?:^|[^\w.])" + REFERENCE + r"\s*$", low): return True
    listed = r"\b(?:chapters|exercises|sections|lines|cells)\s+[\w, –-]{0,24}(?:,|and|or|to|–|-)\s*$"  # chapters 8, 9
    return bool(re.search(listed, low))


def _kind(after: str, value: float):
    "(kind, value in the unit evidence is compared in) of a number followed by `after`."
    if re.match(r"\s*[x×](?!\s*[A-Z0-9(])", after): return "ratio", value
    if re.match(r"\s*times\s+" + COMPARED + r"|\s*-?fold\b", after, re.I): return "ratio", value
    if re.match(r"\s*(?:%|percent\b)", after): return "percent", value
    if u := re.match(r"\s*(ms|milliseconds?|µs|us|s|sec|seconds?|min|minutes?|hours?)\b", after):
        return "time", value * TIME_UNITS[u.group(1)]
    return "plain", value


def claims(nb: dict, name: str) -> list[Claim]:
    "Every number stated in nb's markdown cells, with its kind and qualifier."
    out = []
    for ci, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown": continue
        for block in _strip_markdown("".join(cell["source"])):
            for s0, sent in _sentences(block):
                found = []
                for m in NUMBER.finditer(sent):
                    raw, frac = m.group(1), m.group(2) or ""
                    before, after = sent[:m.start()], sent[m.end():]
                    if _is_reference(before): continue
                    if re.match(r"0\d", raw): continue                                  # 02, 08: chapter names
                    if re.match(r"-bits?\b|\s*·", after): continue        # 64-bit: a format; [12 · Quantization]
                    value = float(raw.replace(",", "") + frac)
                    if not frac and "," not in raw and 1600 <= value <= 2039: continue  # a year
                    kind, value = _kind(after, value)
                    found.append((m.start(), raw + frac, value, len(frac) - 1 if frac else 0, kind))
                for m in WORD_RATIO.finditer(sent):
                    a, b = (WORDS[w.lower()] if w else 0 for w in m.groups())
                    found.append((m.start(), m.group(0).strip(), float(a + b if b else a), 0, "ratio"))
                for m in WORD_FRACTION.finditer(sent):
                    found.append((m.start(), m.group(0), WORDS[m.group(1).lower()] / DENOMS[m.group(2).lower()],
                                  2, "fraction"))
                for m in WORD_TIME.finditer(sent):
                    n = 0.5 if m.group(1).lower().startswith("half") else WORDS[m.group(1).lower()]
                    found.append((m.start(), m.group(0), n * TIME_UNITS[m.group(2).lower()], 0, "time"))
                for start, raw, value, dec, kind in found:
                    out.append(Claim(name, ci, raw, value, dec, kind, _qualifier(sent[:start]), sent.strip()))
    return out


# ------------------------------------------------------------------------------------------------------- evidence
def _value(m) -> float:
    whole, frac, exp = m.group(1), m.group(2) or "", m.group(3)
    return float(whole.replace("_", "").replace(",", "") + frac + (f"e{exp}" if exp else ""))


def _numbers(text: str) -> list[float]:
    "Every number in code or output text (1_000, 1,000, 1e-6, 2**28 and 1 << 20 included)."
    vals = []
    for m in EVIDENCE.finditer(text):
        vals.append(_value(m))
        if "," in m.group(1):                             # "[15,200]" may be a list: both readings
            vals += [float(p) for p in m.group(1).split(",") if p]
    for m in POWER.finditer(text):
        a, b = (int(g) for g in (m.group(1, 2) if m.group(1) else m.group(3, 4)))
        if b < 200: vals.append(float(a ** b if m.group(1) else a << b))
    return vals


def _marked(text: str) -> dict:
    "The numbers an output prints as ratios (9.9x, ×9.9), percentages, fractions (a of b, a / b) and times (s)."
    pools = {"ratio": [], "percent": [], "fraction": [], "time": []}
    for m in EVIDENCE.finditer(text):
        v, after, before = _value(m), text[m.end():m.end() + 12], text[max(0, m.start() - 2):m.start()]
        if re.match(r"\s?[x×](?![\w])|\s*times\b", after) or before.endswith(("×", "x")): pools["ratio"].append(v)
        if re.match(r"\s?%", after): pools["percent"].append(v); pools["fraction"].append(v / 100)
        if u := re.match(r"\s?(ms|µs|us|s|sec|seconds?|min|minutes?|h|hours?)\b", after):
            pools["time"].append(v * TIME_UNITS.get(u.group(1), 3600.0))
    for m in re.finditer(EVIDENCE.pattern + r"\s*(?:of|/)\s*" + EVIDENCE.pattern.replace(r"(?<![\w.])", ""), text):
        a = float(m.group(1).replace(",", "").replace("_", "") + (m.group(2) or ""))
        b = float(m.group(4).replace(",", "").replace("_", "") + (m.group(5) or ""))
        if b: pools["fraction"].append(a / b); pools["percent"].append(100 * a / b)
    return pools


def _output_text(o: dict) -> str:
    if o.get("output_type") == "stream": return "".join(o.get("text", ""))
    if o.get("output_type") == "error": return o.get("evalue", "")
    data = o.get("data", {})
    parts = [data[k] for k in ("text/plain", "text/markdown", "text/html", "text/latex") if k in data]
    return re.sub(r"<[^>]+>", " ", "".join("".join(p) if isinstance(p, list) else p for p in parts))


def evidence(nb: dict) -> dict:
    """Sorted numbers by what they can support: "plain" (every number in code and outputs), and "ratio",
    "percent", "fraction", "time": those an output prints as such, plus every number of an assert line."""
    pools = {"plain": [], "ratio": [], "percent": [], "fraction": [], "time": []}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code": continue
        src = "".join(cell["source"])
        pools["plain"] += _numbers(src)
        for line in src.split("\n"):
            if re.match(r"\s*assert\b", line):
                for k in ("ratio", "percent", "fraction", "time"): pools[k] += _numbers(line)
        for o in cell.get("outputs", []):
            text = _output_text(o)
            pools["plain"] += _numbers(text)
            for k, v in _marked(text).items(): pools[k] += v
    return {k: sorted(set(v)) for k, v in pools.items()}


def _near(values: list[float], lo: float, hi: float) -> bool:
    i = bisect_left(values, lo)
    return i < len(values) and values[i] <= hi


def supported(c: Claim, pools: dict) -> bool:
    "Whether a number the pools hold is c's value, rounded as c is written, or within c's qualifier."
    pool, t = pools[c.kind], c.value
    half = 0.5 * 10 ** -c.decimals * (1 + 1e-9)
    if c.kind == "time": half = 0.5 * 10 ** -c.decimals * t / float(re.sub(r"[^\d.]", "", c.text) or 1) \
        if re.match(r"[\d,.]+$", c.text) else 0.05 * t                 # in the unit the prose wrote
    if c.kind == "fraction": half = 0.015                                 # "two thirds": 0.652-0.682
    if c.qualifier == "approx": half = max(half, 0.1 * abs(t))
    if c.qualifier == "up": return _near(pool, t - half, 2 * t + half)
    if c.qualifier == "down": return _near(pool, t / 2 - half, t + half)
    return _near(pool, t - half, t + half)


def _key(text: str) -> str:
    return text.replace(",", "").strip().lower()


def stated(data: dict, name: str) -> dict:
    "The numbers notebook `name` may state without showing: cited constants ('*' for every page) and given inputs."
    out = {}
    for group in (data.get("cited", {}).get("*", {}), data.get("cited", {}).get(name, {}),
                  data.get("given", {}).get(name, {})):
        out.update({_key(k): v for k, v in group.items()})
    return out


def check(nb_path, data: dict = None) -> list[tuple[Claim, str]]:
    "The unsupported claims of one notebook: (claim, why) pairs, in page order."
    nb = json.loads(Path(nb_path).read_text())
    name = Path(nb_path).name
    allowed = stated(load_data() if data is None else data, name)
    pools = evidence(nb)
    problems = []
    for c in claims(nb, name):
        if _key(c.text) in allowed: continue
        if not supported(c, pools):
            where = "the code or an output" if c.kind == "plain" else f"an output (printed as a {c.kind}) or an assert"
            problems.append((c, f"no {c.kind} {c.text!r} in {where}"
                                + {"approx": " (within 10 %)", "up": " (at or above it, within 2x)",
                                   "down": " (at or below it, within 2x)"}.get(c.qualifier, "")))
        elif c.kind == "time" and not MACHINE.search("".join(nb["cells"][c.cell]["source"])):
            problems.append((c, "a time quoted without the machine it was measured on"))
    return problems


def load_data() -> dict:
    return json.loads(DATA.read_text())


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb"))


def main(paths):
    "Print every unsupported number (known ones included) of the notebooks given, or of all."
    data, total = load_data(), 0
    for p in paths or notebooks():
        found = check(p, data)
        total += len(found)
        for c, why in found:
            print(f"{c.notebook} (cell {c.cell}) {c.text!r}: {why}\n    {c.sentence}")
    print(f"{total} unsupported numbers")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
