"""``TAGGER_NO_SKIPS=1`` (CI): the suite's own conftest turns every skip outside the fault suite into a failure."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parents[1] / "conftest.py").read_text()
TESTS = """
import pytest

def test_needs_a_tool():
    pytest.skip("no tool here")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

@pytest.mark.fault
def test_fault_scenario():
    pass

def test_fine():
    pass
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeconftest(CONFTEST)
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\nmarkers =\n    fault: fault scenarios\n")
    pytester.makepyfile(test_some=TESTS, test_module_skip="import pytest\npytest.skip('no browser', "
                        "allow_module_level=True)\n")
    return pytester


def test_without_the_switch_skips_are_skips(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TAGGER_NO_SKIPS", raising=False)
    suite.runpytest().assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_with_the_switch_a_skip_fails_but_the_fault_suite_still_waits(suite: pytest.Pytester,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGGER_NO_SKIPS", "1")
    result = suite.runpytest("--continue-on-collection-errors")  # a module skipped whole is a collection error
    result.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1, errors=1)  # skipped: the fault scenario
    result.stdout.fnmatch_lines(["*test_needs_a_tool skipped, and TAGGER_NO_SKIPS=1*no tool here*"])
    result.stdout.fnmatch_lines(["*test_module_skip.py skipped, and TAGGER_NO_SKIPS=1*no browser*"])
