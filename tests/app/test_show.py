"""`lstm-scratch show`: the page's data against the model, and the page itself in headless
Chromium (Debian's `chromium`, which .ci/run installs), driven by playwright: it loads from disk
with no console error and no request off the file, switching unit repaints, hovering shows the
next characters, selecting a span lists units."""

import base64
import json
import re
import shutil

import numpy as np
import pytest

from conftest import SMALL, assert_one_line_error, run
from lstm_scratch.app import inside, show
from lstm_scratch.errors import DataError
from lstm_scratch.model.charlm import CharLM, ModelConfig
from lstm_scratch.model.data import HAMLET, Vocab

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def page_payload(html: str) -> dict:
    found = re.search(r'<script id="data" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(found[1])


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_page_holds_the_model_s_values_and_predictions(cell):
    vocab = Vocab(list("abc \n"))
    model = CharLM(ModelConfig(5, 6, 2, 3, dtype="float64", cell=cell), seed=1)
    text = "ab?c a\nbc!a"  # '?' and '!' are unknown: shown, not read
    data = show.page_data(model, vocab, text, "about")
    known = [c for c in text if c in "abc \n"]
    assert data["chars"] == list(text) and data["steps"] == len(known)
    assert data["pos"] == [0, 1, -1, 2, 3, 4, 5, 6, 7, -1, 8]
    values, logits = inside.unit_values(model, vocab.encode("".join(known)))
    assert data["kinds"] == list(inside.KINDS[cell]) and len(data["values"]) == len(values)
    for (k, kind), series in values.items():  # one byte a value, each unit to its range
        q = np.frombuffer(base64.b64decode(data["values"][f"{k},{kind}"]), np.uint8)
        low, high = np.array(data["low"][f"{k},{kind}"]), np.array(data["high"][f"{k},{kind}"])
        back = low + q.reshape(6, -1).T / 255 * (high - low)  # (T, H)
        assert np.abs(back - series).max() <= (high - low).max() / 255 / 2 + 1e-5, kind
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for t, top in enumerate(data["top"]):
        assert [i for i, _ in top] == list(np.argsort(-probs[t], kind="stable")[:5])
        assert [p for _, p in top] == pytest.approx(np.sort(probs[t])[::-1][:5], abs=1e-4)


def test_a_constant_unit_is_white_and_a_non_finite_model_one_line():
    q, low, high = show.quantized("c", np.zeros((4, 2)))
    assert set(base64.b64decode(q)) == {128} and low == high == [0.0, 0.0]
    q, _, _ = show.quantized("f", np.full((4, 2), 0.3))
    assert set(base64.b64decode(q)) == {0}
    vocab = Vocab(list("ab"))
    model = CharLM(ModelConfig(2, 3), seed=0)
    model.params.flat[:] = np.nan
    with np.errstate(invalid="ignore"), pytest.raises(DataError, match="non-finite"):
        show.page_data(model, vocab, "abab", "")


def test_no_text_closes_the_script_element():
    vocab = Vocab(list("</script>"))
    model = CharLM(ModelConfig(len(vocab), 4), seed=0)
    html = show.render(show.page_data(model, vocab, "</script><", "</script>"), "x")
    assert html.count("</script>") == 2  # the data's and the code's
    assert page_payload(html)["about"] == "</script>"


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A page of 10,000 characters from a model of two layers of 48, trained for 60 steps."""
    if CHROMIUM is None:
        pytest.fail("no chromium: apt-get install chromium (.ci/run does)", pytrace=False)
    from lstm_scratch.app.cli import main

    folder = tmp_path_factory.mktemp("show")
    text = folder / "text.txt"
    text.write_text(('He said "to be (or not)" —\n  ' + HAMLET + "\n") * 12, encoding="utf-8")
    run_dir = folder / "run"
    options = ["--hidden-size", "48", "--num-layers", "2", "--embed-size", "8", "--quiet"]
    assert (
        main(["train", "--data", str(text), "--steps", "60", "--out", str(run_dir), *options]) == 0
    )
    assert main(["show", str(run_dir), "--text", str(text), "--out", str(folder / "p.html")]) == 0
    return folder / "p.html"


@pytest.mark.slow
def test_the_page_works_in_a_real_browser(page, tmp_path):
    from playwright.sync_api import sync_playwright

    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        tab = browser.new_page(viewport={"width": 1280, "height": 800})
        tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.on("request", lambda r: requests.append(r.url))
        tab.goto(page.as_uri())
        tab.wait_for_selector("#ranks a")
        assert tab.locator("#text span").count() == 10_000
        colours = (
            "() => [...document.querySelectorAll('#text span')]"
            ".slice(0, 400).map(s => s.style.background)"
        )
        before = tab.evaluate(colours)
        assert len(set(before)) > 5  # coloured, and not one colour
        took = tab.evaluate(
            """() => { const t = performance.now();
                       const unit = document.getElementById('unit');
                       unit.value = (+unit.value + 1) % 48;
                       unit.dispatchEvent(new Event('change'));
                       return performance.now() - t; }"""
        )
        assert took < 1000, took
        assert tab.evaluate(colours) != before
        tab.locator("#ranks a").first.click()  # a ranked unit: the picker follows
        assert "unit" in tab.inner_text("#range")
        tab.hover("#text span:nth-child(40)")
        assert tab.is_visible("#tip")
        tip = tab.inner_text("#tip")
        assert "next character" in tip and tip.count("%") == 5
        tab.evaluate(
            """() => { const spans = document.querySelectorAll('#text span');
                       const range = document.createRange();
                       range.setStart(spans[10].firstChild, 0);
                       range.setEnd(spans[30].firstChild, 1);
                       const s = window.getSelection(); s.removeAllRanges(); s.addRange(range);
                       document.dispatchEvent(new MouseEvent('mouseup')); }"""
        )
        assert tab.locator("#span a").count() == 12
        header = tab.text_content("#span div")
        tab.evaluate(  # the same characters, the end at the start of the next one
            """() => { const spans = document.querySelectorAll('#text span');
                       const range = document.createRange();
                       range.setStart(spans[9].firstChild, 1);
                       range.setEnd(spans[31].firstChild, 0);
                       const s = window.getSelection(); s.removeAllRanges(); s.addRange(range);
                       document.dispatchEvent(new MouseEvent('mouseup')); }"""
        )
        assert tab.text_content("#span div") == header
        chars = tab.evaluate(
            "() => [...document.querySelectorAll('#text span')].slice(10, 31)"
            ".map(s => s.textContent).join('')"
        )
        assert header == f"over «{chars}»:"
        tab.locator("#span a").first.click()
        tab.screenshot(path=str(tmp_path / "show.png"))
        browser.close()
    assert not errors, errors
    assert {url.split(":")[0] for url in requests} == {"file"}, requests
    assert (tmp_path / "show.png").stat().st_size > 10_000


def test_bad_input_is_one_line(capsys, tmp_path, text_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("日本語", encoding="utf-8")
    run_dir = tmp_path / "run"
    assert run(capsys, "train", "--data", text_file, "--steps", 2, "--out", run_dir, *SMALL)[0] == 0
    for args, fragment in [
        (["show", tmp_path / "nothing", "--text", text_file], "nothing"),
        (["show", text_file, "--text", text_file], "cannot load"),
        (["show", run_dir, "--text", empty], "empty"),
        (["show", run_dir, "--text", foreign], "none of the text's characters"),
        (["show", run_dir, "--text", text_file, "--max-chars", 0], "--max-chars"),
    ]:
        code, _, err = run(capsys, *args)
        assert_one_line_error(code, err, fragment)
    code, out, _ = run(capsys, "show", run_dir, "--text", text_file, "--max-chars", 50)
    assert code == 0 and "showing the first 50" in out
    assert len(page_payload((run_dir / "show.html").read_text("utf-8"))["chars"]) == 50
