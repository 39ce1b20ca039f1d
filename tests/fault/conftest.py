"""Fresh broker (behind a cuttable proxy) and Redis for every fault scenario."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stream.embedded import RedisServer, ServiceGroup

# the namespace fixture on the services below, and worker logs in a failure's report
from ..integration.conftest import namespace, pytest_runtest_makereport  # noqa: F401
from .proxy import ProxiedTansu


@pytest.fixture
def services() -> Iterator[ServiceGroup]:
    """Per test: Tansu keeps everything in memory, so a fresh one keeps memory in check."""
    with ServiceGroup(broker=ProxiedTansu(), redis=RedisServer()) as group:
        yield group
