"""Suite-wide options: the fault suite runs only when asked for (``--run-fault``); with
``TAGGER_NO_SKIPS=1`` (set by ``.ci/run``) any other skip is a failure, so that a test whose
broker, Java, browser or tool is missing cannot pass CI unseen."""

from __future__ import annotations

import os
from collections.abc import Generator
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-fault", action="store_true", default=False,
                     help="run the fault-injection suite (tests/fault; minutes, 200k events per scenario)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-fault"):
        return
    skip = pytest.mark.skip(reason="fault suite: run with ./dev test tests/fault --run-fault")
    for item in items:
        if "fault" in item.keywords:
            item.add_marker(skip)


def _fail_skip(report: Any, where: str) -> None:
    """With ``TAGGER_NO_SKIPS=1``: a skipped report (not an expected failure) becomes a failure that says why."""
    if os.environ.get("TAGGER_NO_SKIPS") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{where} skipped, and TAGGER_NO_SKIPS=1 (CI) allows no skip but the fault suite's: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    if "fault" not in item.keywords:  # the default suite leaves those to `--run-fault`
        _fail_skip(outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[None, Any, None]:
    outcome = yield
    _fail_skip(outcome.get_result(), collector.nodeid)  # a module skipped as a whole (allow_module_level)
