"""The HTML report: one self-contained file, checked as text and in headless Chromium.

The browser test drives Debian's chromium through chromedriver (Selenium, with the driver
path given so Selenium Manager downloads nothing); it skips only when they are absent.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from test_plots import synthetic_store

from ponder.eval.html import script_json, write_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or (
    "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("html")
    store = synthetic_store(folder / "runs.db", problems=60)  # two pages of problems
    return write_html(store, folder / "report.html")


def blocks(text: str) -> dict[str, str]:
    return dict(re.findall(r'<script type="application/json" id="([^"]+)">(.*?)</script>',
                           text, re.S))


def test_html_is_self_contained(report):
    text = report.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r'\b(src|href)="(?!data:|#)', text)  # only inline resources
    assert text.count('src="data:image/png;base64,') == 5
    assert "<script>alert(1)</script>" not in text  # stored text never becomes markup


def test_html_pages_problem_data_into_separate_blocks(report):
    found = blocks(report.read_text(encoding="utf-8"))
    runs = json.loads(found["runs-data"])
    index = json.loads(found["index-data"])
    assert [r["label"] for r in runs][:3] == ["greedy", "sc@2", "sc@4"]
    assert len(index) == 60 and "samples" not in json.dumps(index)
    detail = json.loads(found["pd-0"])
    assert detail["question"].endswith("<script>alert(1)</script>")
    by_label = {runs[int(r)]["label"]: v for r, v in detail["runs"].items()}
    assert len(by_label["sc@4"]["samples"]) == 4 and by_label["sc@4"]["votes"]
    assert by_label["beam"]["nodes"] and by_label["beam"]["chosen"]
    assert by_label["power a=4.0 N=4"]["chains"][0][0]["accepted"] in (True, False)


def test_script_json_cannot_close_the_script_or_name_a_url():
    text = script_json({"a": "</script><b>https://x.org/ & \u2028"})
    assert "</" not in text and "https://" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><b>https://x.org/ & \u2028"}


def _png_colors(png: bytes) -> int:
    """How many distinct pixel rows a PNG screenshot has (1 = a blank page)."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    idat = b"".join(png[i + 8:i + 8 + struct.unpack(">I", png[i:i + 4])[0]]
                    for i in _chunks(png, b"IDAT"))
    raw = zlib.decompress(idat)
    stride = len(raw) // height
    return len({raw[r * stride + 1:(r + 1) * stride] for r in range(height)})


def _chunks(png: bytes, kind: bytes):
    i = 8
    while i < len(png):
        length = struct.unpack(">I", png[i:i + 4])[0]
        if png[i + 4:i + 8] == kind:
            yield i
        i += 12 + length


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless browser test needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver); not installed here")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1280,1000",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_html_in_headless_chromium(report, browser):
    from selenium.webdriver.common.by import By

    browser.get(report.as_uri())
    assert browser.title.endswith("runs.db")
    rows = browser.find_elements(By.CSS_SELECTOR, "#problem-table tr.problem")
    assert len(rows) == 50  # the first page of 60
    assert len(browser.find_elements(By.CSS_SELECTOR, "#runs-table tr.run-row")) == 7

    # sort the runs table by accuracy, twice (ascending, then descending)
    header = browser.find_element(By.CSS_SELECTOR, '#runs-table th[data-key="accuracy"]')
    header.click()
    accuracy = [float(r.find_elements(By.TAG_NAME, "td")[5].text)
                for r in browser.find_elements(By.CSS_SELECTOR, "#runs-table tr.run-row")]
    assert accuracy == sorted(accuracy)

    # click a problem: its samples, votes, tree and chains appear
    browser.find_elements(By.CSS_SELECTOR, "#problem-table tr.problem")[2].click()
    detail = browser.find_element(By.ID, "detail")
    assert "Problem arith-2" in detail.text
    assert "What is 2 + 10? <script>alert(1)</script>" in detail.text
    assert len(detail.find_elements(By.CSS_SELECTOR, "tr.sample")) == 1 + 2 + 4 + 3 * 2 + 4
    assert "search tree" in detail.text and "MCMC chains" in detail.text
    assert "proposals accepted" in detail.text
    assert detail.find_elements(By.CSS_SELECTOR, ".tree li.chosen")

    # the next page reaches the last problems
    browser.find_element(By.ID, "next").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#problem-table tr.problem")) == 10

    png = browser.get_screenshot_as_png()
    assert len(png) > 20_000 and _png_colors(png) > 50

    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    resources = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    assert all(u.startswith(("data:", "file:")) for u in resources), resources
    requests = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = [m["params"]["request"]["url"] for m in requests
            if m["method"] == "Network.requestWillBeSent"]
    assert report.as_uri() in urls  # the log works; Chromium's own pages are chrome://
    network = [u for u in urls if u.split(":", 1)[0] in ("http", "https", "ws", "wss", "ftp")]
    assert network == []


def test_report_command_writes_html(tmp_path, capsys):
    from ponder.cli import main

    path = synthetic_store(tmp_path / "runs.db", problems=3)
    assert main(["report", path, "--html", str(tmp_path / "r.html")]) == 0
    assert "accuracy [95% CI]" in capsys.readouterr().out
    assert "arith-2" in (tmp_path / "r.html").read_text(encoding="utf-8")


def test_particle_traces_show_weights_ess_and_resampling_in_chromium(tmp_path, browser):
    """A real particle Gibbs run (table engine, a hashed toy reward) stored the way `ponder
    eval` stores it: the page shows each sweep's steps, ESS and who resampled from whom."""
    from selenium.webdriver.common.by import By
    from test_particles import TextReward, pf_config

    from ponder.engines.table import TableEngine
    from ponder.eval.runner import graded_row
    from ponder.eval.store import Store, run_id_for
    from ponder.strategies.particle_gibbs import ParticleGibbs
    from ponder.tasks.datasets import Problem

    problem = Problem("toy-0", "toy question", "01")
    [result] = pf_config(ParticleGibbs, particles=4, sweeps=2).run(
        [problem], TableEngine(vocab_size=3, seed=0), TextReward(),
        extract=lambda t: t or None, render=lambda p: [0])
    config = {"task": "toy", "strategy": "particle_gibbs", "options": {}, "model": "table"}
    store = Store(tmp_path / "runs.db")
    store.upsert_run(run_id_for(config), "pg", config, config, planned=1)
    store.add_problem(run_id_for(config), graded_row(problem, 0, result))
    store.close()
    page = write_html(tmp_path / "runs.db", tmp_path / "report.html")

    browser.get(page.as_uri())
    browser.find_elements(By.CSS_SELECTOR, "#problem-table tr.problem")[0].click()
    detail = browser.find_element(By.ID, "detail")
    assert "particles" in detail.text and "sweep 1:" in detail.text
    resampled = sum(1 for sweep in result.trace["particle_steps"] for step in sweep
                    if step["ancestors"])
    assert resampled and "<-" in browser.execute_script(
        "return document.getElementById('detail').textContent")
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
