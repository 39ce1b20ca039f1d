"""The dashboard in headless Chromium (Debian's chromium, driven by Playwright; no browser download).

Load the page with a finance token, publish an order, see the live feed and the tier chart change,
add a manual tag, look the customer up and see the reason text, the manual tag's author and note,
the churn risk and the spend chart; a viewer sees the feed without reasons. Screenshots go to
test-artifacts/ (kept as CI artifacts).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Namespace, wait_for

pytestmark = pytest.mark.integration
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) is needed for the browser test")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is needed for the browser test (.ci/run installs it)", allow_module_level=True)


def tier_counts(page: Any) -> dict[str, int]:
    return {t: int(page.get_attribute(f'#tiers rect[data-tier="{t}"]', "data-count")) for t in "ABCD"}


def test_dashboard_live_feed_tier_chart_and_lookup_in_chromium(namespace: Namespace) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    worker = namespace.worker()
    base = f"http://127.0.0.1:{worker.web_port}"
    namespace.produce("order", {"event_id": "d-0", "customer_id": "dash-00", "ts": "2026-11-01T10:00:00Z",
                                "order_id": "d-0", "amount": "50.00"})
    wait_for(lambda: namespace.view("dash-00"), 60, "a first customer")

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/dashboard#token={namespace.tokens['finance']}")
            page.wait_for_function("document.querySelector('#ruleset').textContent !== '…'", timeout=30_000)
            assert "token=" not in page.evaluate("location.href")  # the token leaves the address bar at once
            assert page.text_content("#role") == "finance"
            assert page.get_attribute("#metrics-link", "href") == "/metrics"
            page.wait_for_selector('#feed li[data-customer="dash-00"]', timeout=30_000)  # recent history
            before = tier_counts(page)

            namespace.produce("order", {"event_id": "d-1", "customer_id": "dash-01", "ts": "2026-11-02T10:00:00Z",
                                        "order_id": "d-1", "amount": "12500.00"})
            page.wait_for_selector('#feed li[data-customer="dash-01"][data-kind="tag_change"]', timeout=60_000)
            line = page.text_content('#feed li[data-customer="dash-01"]') or ""
            assert "+big_spender" in line and "spend_365d=12500.00 >= 10000" in line
            deadline = time.monotonic() + 30
            while sum(tier_counts(page).values()) != sum(before.values()) + 1:
                assert time.monotonic() < deadline, f"tier chart did not change: {before} -> {tier_counts(page)}"
                page.wait_for_timeout(250)

            status, _ = worker.request("POST", "/customers/dash-01/tags",
                                       {"action": "add_tag", "tag": "vip_watch", "note": "renewal talks"}, who="sales")
            assert status == 202
            page.wait_for_selector('#feed li[data-customer="dash-01"] >> text=+vip_watch', timeout=60_000)

            page.fill("#customer-id", "dash-01")
            page.click("#lookup button")
            page.wait_for_selector('#tags li[data-tag="big_spender"]', timeout=30_000)
            reason = page.text_content('#tags li[data-tag="big_spender"]') or ""
            assert reason.startswith("big_spender: ") and "spend_365d=12500.00" in reason  # entry or hysteresis text
            manual = page.text_content('#tags li[data-tag="vip_watch"]') or ""
            assert "manual by sales: renewal talks" in manual
            assert page.text_content("#customer-table") and "tier" in (page.text_content("#customer-table") or "")
            assert page.query_selector("#breakdown tr") is not None
            assert page.query_selector("#churn") is not None
            bars = page.query_selector_all("#spend-chart rect")
            assert len(bars) == 12 and any(float(b.get_attribute("height") or 0) > 0 for b in bars)
            page.screenshot(path=str(ARTIFACTS / "dashboard-finance.png"), full_page=True)
            assert not errors, errors

            # a viewer: the same feed, without reasons or churn; the lookup has no score or spend
            viewer = browser.new_page()
            viewer.goto(f"{base}/dashboard#token={namespace.tokens['viewer']}")
            viewer.wait_for_selector('#feed li[data-customer="dash-01"]', timeout=30_000)
            assert "spend_365d" not in (viewer.text_content("#feed") or "")
            viewer.fill("#customer-id", "dash-01")
            viewer.click("#lookup button")
            viewer.wait_for_selector('#tags li[data-tag="big_spender"]', timeout=30_000)
            assert viewer.query_selector("#spend-chart") is None and viewer.query_selector("#churn") is None
            assert "spend_365d" not in (viewer.text_content("#customer-result") or "")
            viewer.screenshot(path=str(ARTIFACTS / "dashboard-viewer.png"), full_page=True)

            # a bad token gets the token form, not data
            stranger = browser.new_page()
            stranger.goto(f"{base}/dashboard#token=tgr_not-a-real-token-000000000000000000")
            stranger.wait_for_selector("#login:not([hidden])", timeout=30_000)
            assert "invalid bearer token" in (stranger.text_content("#login-error") or "")
        finally:
            browser.close()
    assert (ARTIFACTS / "dashboard-finance.png").stat().st_size > 10_000
