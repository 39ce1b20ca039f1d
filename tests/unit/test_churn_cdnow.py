"""The held-out CDNOW check runs on the real log shipped by lifetimes and prints both AUCs."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from agents.cli.main import main


def test_cdnow_holdout_report() -> None:
    pytest.importorskip("lifetimes")
    result = CliRunner().invoke(main, ["churn", "cdnow"])
    assert result.exit_code == 0, result.output
    assert "23570 customers" in result.output
    found = re.search(r"combined (0\.\d+), BG/NBD alone (0\.\d+)", result.output)
    assert found and all(0.6 < float(v) < 0.95 for v in found.groups())
