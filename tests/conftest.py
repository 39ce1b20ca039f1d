"""Suite-wide options: the fault suite runs only when asked for (``--run-fault``)."""

from __future__ import annotations

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
