"""Every number a chapter states is one its cells show (tests/claims.py says how a number is checked).

The first test runs the check over every notebook; the others show that it fails on the contradictions it exists
for, each written into a tiny notebook of its own, and once into a real chapter."""
import copy, json
import pytest
from claims import ROOT, check, claims, load_data, notebooks

DATA = load_data()


def page(*cells):
    "A notebook of ('md', text) and ('code', source, printed output) cells."
    out = []
    for c in cells:
        if c[0] == "md":
            out.append({"cell_type": "markdown", "metadata": {}, "source": [c[1]]})
        else:
            out.append({"cell_type": "code", "metadata": {}, "source": [c[1]], "execution_count": 1,
                        "outputs": [{"output_type": "stream", "name": "stdout", "text": [c[2]]}] if c[2] else []})
    return {"cells": out, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def unsupported(nb, tmp_path, data=None):
    path = tmp_path / "page.ipynb"
    path.write_text(json.dumps(nb))
    return [(c.text, why) for c, why in check(path, data or {})]


def test_every_number_the_book_states_is_shown():
    known = {(k["notebook"], k["number"], k["sentence"]) for k in DATA["known_unfixed"]}
    found, new = set(), []
    for path in notebooks():
        for c, why in check(path, DATA):
            found.add((c.notebook, c.text, c.sentence))
            if (c.notebook, c.text, c.sentence) not in known:
                new.append(f"{c.notebook} (cell {c.cell}) {c.text!r}: {why}\n    {c.sentence}")
    stale = [f"{n}: {num!r} in: {s}" for n, num, s in sorted(known - found)]
    assert not new, ("numbers stated but not shown (print or assert them in a cell, render them from recorded data, "
                     "or cite their source in tests/data/claims.json):\n" + "\n".join(new))
    assert not stale, "fixed or reworded: remove from known_unfixed in tests/data/claims.json:\n" + "\n".join(stale)


def test_cited_and_given_numbers_say_where_they_come_from_and_are_used():
    names = {p.name: p for p in notebooks()}
    for group in ("cited", "given"):
        for nb_name, numbers in DATA[group].items():
            assert nb_name == "*" or nb_name in names, f"{group}: no notebook {nb_name}"
            stated = set() if nb_name == "*" else {c.text.replace(",", "").lower() for c in
                                                   claims(json.loads(names[nb_name].read_text()), nb_name)}
            for number, source in numbers.items():
                assert isinstance(source, str) and len(source) > 10, f"{group} {nb_name} {number}: say its source"
                assert nb_name == "*" or number.replace(",", "").lower() in stated, \
                    f"{group} {nb_name}: {number!r} is no longer stated there; remove it"


def test_a_ratio_the_table_beside_it_contradicts_fails(tmp_path):
    # Chapter 14 said int4's error was "about sixteen times" int8's beside a table of 9.9x and 12.6x.
    table = ("code", "print(table)", "int4 g32: 9.9x int8's error\nint4 g128: 12.6x int8's error\n16 heads\n")
    bad = page(("md", "int4 costs about sixteen times int8's weight error."), table)
    assert unsupported(bad, tmp_path) == [("sixteen times", "no ratio 'sixteen times' in an output (printed as a "
                                                            "ratio) or an assert (within 10 %)")]
    good = page(("md", "int4 costs about 10× int8's weight error at g32."), table)
    assert unsupported(good, tmp_path) == []


def test_numbers_no_cell_computes_fail(tmp_path):
    # Chapter 14's "1.5 or 2.8 bits more per head weight" (its cells gave 8.02, 5.0 and 4.25) and exercise 3's
    # "two thirds of each layer's weights" (9,437,184 of 15,730,944 is 60 %).
    out = "extra bits per head weight: int8 8.02, int4 g32 5.0, g128 4.25\nMLP: 9,437,184 of 15,730,944 weights\n"
    bad = page(("md", "The copy costs 1.5 or 2.8 bits more per head weight."),
               ("md", "Quantize only the MLP (two thirds of each layer's weights)."), ("code", "show()", out))
    assert [t for t, _ in unsupported(bad, tmp_path)] == ["1.5", "2.8", "two thirds of"]
    good = page(("md", "The copy costs 8.02, 5.0 or 4.25 bits more per head weight."),
                ("md", "Quantize only the MLP (60 % of each layer's weights)."), ("code", "show()", out))
    assert unsupported(good, tmp_path) == []


def test_a_time_must_be_shown_and_say_where_it_was_measured(tmp_path):
    # 12 said "about two minutes on a laptop's CPU"; its cell printed 240 s, on a two-core server.
    run = ("code", "train()", "2,563 tokens/s (240 s) on Intel(R) Xeon(R) Processor (2 cores)\n")
    assert unsupported(page(("md", "It learns in about two minutes on a laptop's CPU."), run), tmp_path) == [
        ("two minutes", "no time 'two minutes' in an output (printed as a time) or an assert (within 10 %)")]
    assert unsupported(page(("md", "It learns in about four minutes."), run), tmp_path) == [
        ("four minutes", "a time quoted without the machine it was measured on")]
    assert unsupported(page(("md", "It learns in about four minutes, measured on a two-core Xeon."), run),
                       tmp_path) == []


def test_rounding_is_what_the_prose_writes(tmp_path):
    out = ("code", "print(loss)", "training loss 8.98 -> 4.67; 1,787,264 parameters; 0.42137\n")
    assert unsupported(page(("md", "The loss falls to 4.7 with 1,787,264 parameters (0.42)."), out), tmp_path) == []
    assert [t for t, _ in unsupported(page(("md", "The loss falls to 4.6, then 4.672 (0.4214)."), out),
                                      tmp_path)] == ["4.6", "4.672"]


def test_names_references_and_settings_are_not_claims(tmp_path):
    md = ("# 14 · Quantization\n\nChapter 14 and appendix A5 (section 3), exercises 4 and 7, transformers 5.24 and "
          "PEFT 0.21.2, int8, Qwen3-0.6B, g32, a 64-bit integer, the `head_dim=96` setting, $\\sqrt{d_{77}}$, "
          "[arXiv 2505.09388](https://arxiv.org/abs/2106.09685), Yang et al., 2025; for T = 333, 1,444 and 5,555.\n\n"
          "1. An exercise.")
    assert unsupported(page(("md", md)), tmp_path) == []


def test_cited_constants_need_their_notebook_or_every_page(tmp_path):
    nb = page(("md", "Qwen3-32B's hidden size is 5120."))
    assert [t for t, _ in unsupported(nb, tmp_path)] == ["5120"]
    assert unsupported(nb, tmp_path, {"cited": {"page.ipynb": {"5120": "Qwen3-32B's config.json"}}}) == []


def test_a_contradiction_written_into_a_real_chapter_fails(tmp_path):
    nb = json.loads((ROOT / "notebooks" / "12_training.ipynb").read_text())
    path = tmp_path / "12_training.ipynb"
    path.write_text(json.dumps(nb))
    before = {(c.text, c.sentence) for c, _ in check(path, DATA)}
    wrong = copy.deepcopy(nb)
    wrong["cells"].insert(5, {"cell_type": "markdown", "metadata": {}, "source": [
        "The model has 1,787,000 parameters, and bfloat16 autocast trains it about 700x faster."]})
    path.write_text(json.dumps(wrong))
    after = {(c.text, c.sentence) for c, _ in check(path, DATA)} - before
    assert sorted(t for t, _ in after) == ["1,787,000", "700"]
