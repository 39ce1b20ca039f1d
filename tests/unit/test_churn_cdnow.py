"""The held-out CDNOW check runs on the real log shipped by lifetimes and prints every AUC side by side."""

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
    # issue 29's target: trained only on the log up to 1997-09-30, at least 0.77 and above BG/NBD alone
    learned = re.search(r"learned model (0\.\d+), BG/NBD alone (0\.\d+), weighted mix (0\.\d+)", result.output)
    assert learned, result.output
    model, alone, mix = (float(v) for v in learned.groups())
    assert model >= 0.77 and model > alone and (alone, mix) == tuple(float(v) for v in found.groups()[::-1])
    gaps = [float(v) for v in re.findall(r"largest gap (\d\.\d+)", result.output)]
    assert len(gaps) == 2 and max(gaps) <= 0.05  # the risk is a calibrated probability, at the cut and out of time
