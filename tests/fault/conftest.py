"""Fresh broker (behind a cuttable proxy) and Redis for every fault scenario."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stream.embedded import RedisServer, ServiceGroup

from ..integration.conftest import namespace  # noqa: F401 - the namespace fixture, on the services below
from .proxy import ProxiedTansu


@pytest.fixture
def services() -> Iterator[ServiceGroup]:
    """Per test: Tansu keeps everything in memory, so a fresh one keeps memory in check."""
    with ServiceGroup(broker=ProxiedTansu(), redis=RedisServer()) as group:
        yield group
