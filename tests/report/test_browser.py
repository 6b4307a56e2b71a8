"""The worksheet and the dashboard in headless Chromium (Debian's package, installed by the test
setup): the page loads offline with no console error, sorting (mouse click on a header) and
filtering (typed text, role/tier/status selects) change the visible rows, the screenshot is not
blank, and the failed study is shown with its reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from chromium_cdp import Browser
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser(chromium):
    with Browser(chromium) as b:
        yield b


def _visible(page, table: str, col: int) -> list[str]:
    return page.evaluate(
        f"Array.from(document.querySelectorAll('#{table} tbody tr')).filter(r => !r.hidden)"
        f".map(r => r.cells[{col}].textContent.trim())")


def _attr(page, table: str, attr: str) -> list[str]:
    return page.evaluate(
        f"Array.from(document.querySelectorAll('#{table} tbody tr')).filter(r => !r.hidden)"
        f".map(r => r.getAttribute('{attr}'))")


def _assert_clean_load(page) -> None:
    assert page.evaluate("document.readyState") == "complete"
    errors = page.console_errors()
    assert not errors, errors
    urls = page.requested_urls()
    assert urls and all(u.startswith(("file:", "data:")) for u in urls), urls
    broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
    assert broken == 0


def _assert_not_blank(png: bytes) -> None:
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(float)
    assert img.shape[0] > 500 and img.shape[1] > 800
    assert img.std() > 20, "screenshot is (nearly) uniform"
    colours = len(np.unique(img.reshape(-1, 3) // 8, axis=0))
    assert colours > 50, f"only {colours} colours"
    assert (img.mean(axis=2) < 100).mean() > 0.005  # some dark text/lines on the page


def _sorted_by(values: list[str], desc: bool) -> bool:
    nums = [float(v) for v in values if v not in ("–", "")]
    return nums == sorted(nums, reverse=desc)


def test_worksheet_in_chromium(browser, results):
    page = browser.open(results["good"] / "worksheet.html")
    _assert_clean_load(page)
    _assert_not_blank(page.screenshot())
    n = page.evaluate("document.querySelectorAll('#ranked tbody tr').length")
    assert n >= 5
    before = _visible(page, "ranked", 0)
    assert page.evaluate("document.querySelector('[data-count-for=ranked]').textContent") == f"{n} of {n} rows shown"

    # sort by score: mouse click on the header, ascending then descending
    page.click("#ranked thead th:nth-child(7)")
    asc = _visible(page, "ranked", 6)
    assert _sorted_by(asc, desc=False)
    assert _visible(page, "ranked", 0) != before
    page.click("#ranked thead th:nth-child(7)")
    assert _sorted_by(_visible(page, "ranked", 6), desc=True)
    assert page.evaluate("document.querySelector('#ranked thead th:nth-child(7)').getAttribute('aria-sort')") == "descending"

    # filter by role, by tier, then by typed text
    roles = _attr(page, "ranked", "data-role")
    page.select("select[data-filter-table=ranked][data-filter-col=role]", "inject")
    shown = _attr(page, "ranked", "data-role")
    assert shown and set(shown) == {"inject"} and len(shown) == roles.count("inject") < n
    page.select("select[data-filter-table=ranked][data-filter-col=role]", "")
    assert len(_visible(page, "ranked", 0)) == n
    tiers = _attr(page, "ranked", "data-tier")
    t0 = tiers[0]
    page.select("select[data-filter-table=ranked][data-filter-col=tier]", t0)
    assert len(_visible(page, "ranked", 0)) == tiers.count(t0)
    page.select("select[data-filter-table=ranked][data-filter-col=tier]", "")
    page.type_text("input[data-filter-table=ranked]", "lung")
    labels = _visible(page, "ranked", 2)
    texts = page.evaluate("Array.from(document.querySelectorAll('#ranked tbody tr'))"
                          ".filter(r => !r.hidden).map(r => r.textContent.toLowerCase())")
    assert 0 < len(labels) < n and all("lung" in t for t in texts)
    assert page.evaluate("document.querySelector('[data-count-for=ranked]').textContent") == f"{len(labels)} of {n} rows shown"
    assert page.console_errors() == []


def test_dashboard_in_chromium_shows_failed_study(browser, results):
    page = browser.open(results["results"] / "report" / "index.html")
    _assert_clean_load(page)
    _assert_not_blank(page.screenshot())

    # the failed study with its reason
    page.select("select[data-filter-table=studies-table][data-filter-col=status]", "failed")
    rows = page.evaluate("Array.from(document.querySelectorAll('#studies-table tbody tr'))"
                         ".filter(r => !r.hidden).map(r => r.textContent)")
    assert len(rows) == 1 and "PHANTOM002" in rows[0] and "failed" in rows[0]
    assert "GeometryError" in rows[0] and "missing slices" in rows[0]
    page.select("select[data-filter-table=studies-table][data-filter-col=status]", "done")
    rows = _visible(page, "studies-table", 0)
    assert rows == ["PHANTOM001"]

    # lesion table: sort by volume (click), filter by role and text
    n = page.evaluate("document.querySelectorAll('#lesion-table tbody tr').length")
    page.click("#lesion-table thead th:nth-child(10)")
    assert _sorted_by(_visible(page, "lesion-table", 9), desc=False)
    page.click("#lesion-table thead th:nth-child(10)")
    assert _sorted_by(_visible(page, "lesion-table", 9), desc=True)
    page.select("select[data-filter-table=lesion-table][data-filter-col=role]", "monitor")
    shown = _attr(page, "lesion-table", "data-role")
    assert shown and set(shown) == {"monitor"} and len(shown) < n
    page.select("select[data-filter-table=lesion-table][data-filter-col=role]", "")
    page.type_text("input[data-filter-table=lesion-table]", "liver")
    shown = _visible(page, "lesion-table", 2)
    assert 0 < len(shown) < n
    # the worksheet link of a lesion resolves to the study's worksheet
    href = page.evaluate("document.querySelector('#lesion-table tbody tr:not([hidden]) a').href")
    assert href.startswith("file:") and "worksheet.html#lesion-" in href
    assert page.console_errors() == []
