"""The routing page in a real browser: headless Chromium (Debian's `chromium` and
`chromium-driver`, installed by `make browser`), driven by Selenium with the network off.
What it shows at a layer the test picks must be verify.json's numbers for that layer."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import page_data, run_cli

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium, offline. Missing: a failure that says how to install it (never skipped)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.fail(f"{CHROMIUM} or {CHROMEDRIVER} is missing: run `make browser` (Debian's chromium, chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_network_conditions(offline=True, latency=0, throughput=0)
    yield driver
    driver.quit()


def rgb(css: str) -> tuple[int, ...]:
    """'rgba(31, 119, 180, 0.5)' or 'rgb(31, 119, 180)' -> (31, 119, 180)."""
    return tuple(int(x) for x in re.findall(r"[\d.]+", css)[:3])


def on_screen(driver) -> dict:
    """What the page shows now: per domain, tokens per expert colour, read from each
    token's computed background; and the per-layer moved counts it states."""
    from selenium.webdriver.common.by import By

    legend = {
        rgb(s.value_of_css_property("background-color")): int(s.get_attribute("data-expert"))
        for s in driver.find_elements(By.CSS_SELECTOR, "#legend .swatch")
    }
    colours = driver.execute_script(
        "return [...document.querySelectorAll('.tok')]"
        ".map(s => [s.dataset.domain, getComputedStyle(s).backgroundColor])"
    )
    counts: dict[str, Counter] = {}
    for domain, css in colours:
        counts.setdefault(domain, Counter())[legend[rgb(css)]] += 1
    note = driver.find_element(By.ID, "moved-note")
    return {"counts": counts, "moved": (note.get_attribute("data-topk"), note.get_attribute("data-top1"))}


def select(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def test_the_page_shows_verify_json_at_the_layer_picked(example, browser, tmp_path):
    from selenium.webdriver.common.by import By

    folder = example["awq"]
    report = json.loads((folder / "verify.json").read_text())
    rr = report["routing_report"]
    parity = next(c for c in report["checks"] if c["name"] == "routing_parity")
    page = folder / "routing.html"
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.read_text()), "the page reaches for the network"
    browser.get(page.as_uri())
    layers = len(rr["routing_16bit"][rr["domains"][0]]["share"])
    assert browser.find_element(By.ID, "layer-shown").text == "0"

    layer = layers - 1  # not the one the page opens at
    select(browser, "layer", str(layer))
    assert browser.find_element(By.ID, "layer-shown").text == str(layer)
    for model, key in (("0", "routing_16bit"), ("1", "routing_4bit")):
        select(browser, "model", model)
        shown = on_screen(browser)
        for domain, counts in shown["counts"].items():
            n = sum(counts.values())
            expected = [round(s * n) for s in rr[key][domain]["top1_share"][layer]]
            assert [counts[e] for e in range(len(rr["experts"]))] == expected, (key, domain)
        rows = browser.find_elements(By.CSS_SELECTOR, "#layer-table tbody tr")
        for row in rows:
            d, e = row.get_attribute("data-domain"), int(row.get_attribute("data-expert"))
            cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td.share")]
            assert cells[0] == f"{100 * rr['routing_16bit'][d]['share'][layer][e]:.1f}%"
            assert cells[1] == f"{100 * rr['routing_4bit'][d]['share'][layer][e]:.1f}%"
    assert shown["moved"] == (str(parity["tokens_topk_changed"][layer]), str(parity["tokens_top1_changed"][layer]))
    assert sum(parity["tokens_top1_changed"]) > 0, "the toy's 4-bit model moves some heaviest experts"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".tok.moved1")) == parity["tokens_top1_changed"][layer]

    select(browser, "domain", rr["domains"][0])  # the domain filter hides the other domain's tokens
    visible = browser.execute_script("return [...document.querySelectorAll('.tok')].filter(s => s.offsetParent).length")
    assert visible == sum(on_screen(browser)["counts"][rr["domains"][0]].values())
    browser.find_element(By.CSS_SELECTOR, ".tok").click()  # one token through every layer
    assert len(browser.find_elements(By.CSS_SELECTOR, "#token-table tbody tr")) == layers
    browser.save_screenshot(str(tmp_path / "routing.png"))
    assert (tmp_path / "routing.png").stat().st_size > 10_000


def test_the_merged_folder_publishes_the_same_page(example):
    page = (example["awq"] / "routing.html").read_bytes()
    assert (example["merged"] / "routing.html").read_bytes() == page
    assert "[routing.html](routing.html)" in (example["merged"] / "README.md").read_text()


def test_route_writes_a_page_for_a_text_the_build_never_saw(example, browser, tmp_path):
    text = tmp_path / "unseen.txt"  # this test file: Python the toy's experts never read
    text.write_text(Path(__file__).read_text())
    out = tmp_path / "page.html"
    proc = run_cli("route", str(example["awq"]), "--text", str(text), "--out", str(out), "--seq-len", "64")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1].startswith(f"route     wrote {out} (")
    data = page_data(out)
    assert [m["label"] for m in data["models"]] == ["4-bit (AWQ)"] and data["domains"] == ["unseen"]
    assert data["experts"] == json.loads((example["awq"] / "verify.json").read_text())["routing_report"]["experts"]
    browser.get(out.as_uri())
    select(browser, "layer", "1")
    counts = on_screen(browser)["counts"]["unseen"]
    n = sum(counts.values())
    assert n == sum(len(w["tokens"]) for w in data["windows"]) and n % 64 == 0
    top1 = data["models"][0]["routing"]["unseen"]["top1_share"][1]
    assert [counts[e] for e in range(len(top1))] == [round(s * n) for s in top1]


@pytest.mark.parametrize("case", ["dense folder", "short text", "no text"])
def test_route_refuses_in_one_line_and_writes_nothing(example, fixture_models, tmp_path, case):
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass\n")
    folder, text, says = {
        "dense folder": (fixture_models / "base", Path(__file__), "not a Mixtral MoE (model_type 'mistral')"),
        "short text": (example["awq"], short, "shorter than one window of 257 tokens"),
        "no text": (example["awq"], tmp_path / "missing.txt", "file not found"),
    }[case]
    out = tmp_path / "page.html"
    proc = run_cli("route", str(folder), "--text", str(text), "--out", str(out))
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0]
    assert not out.exists()
