"""CI's guards. SEAL_ENV_STRICT_SKIPS=1 (set by .ci/run): a skip that CI does not expect fails the run; without it
skips stay skips. pytest-timeout: a test that hangs fails by name and the run goes on. Each test runs pytest on small
test files with this suite's hooks (tests/conftest.py) as a plugin."""

import pytest

import conftest

FINE = "def test_fine():\n    pass\n"
IMPORT_SKIP = """
import pytest

pytest.importorskip("seal_env_no_such_module")


def test_uses_it():
    pass
"""
SKIPS_IN_TESTS = """
import pytest


@pytest.fixture
def needs_a_widget():
    pytest.skip("no widget in a fixture")


@pytest.mark.skipif(True, reason="no widget in a mark")
def test_marked():
    pass


def test_skips_itself():
    pytest.skip("no widget in the test")


def test_uses_the_fixture(needs_a_widget):
    pass


@pytest.mark.xfail(reason="an expected failure is not a skip")
def test_expected_to_fail():
    assert False
"""
ALLOWED = """
import pytest


def test_old_glibc():
    pytest.skip("glibc < 2.33 has no mallinfo2")


@pytest.mark.skipif(True, reason="SQuAD loaded from a local cache (2 articles); offline error path not exercised")
def test_cached_squad():
    pass
"""


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, switch: str | None) -> pytest.RunResult:
    """pytest -rs on the files made so far, with the suite's hooks and SEAL_ENV_STRICT_SKIPS set to ``switch``."""
    if switch is None:
        monkeypatch.delenv("SEAL_ENV_STRICT_SKIPS", raising=False)
    else:
        monkeypatch.setenv("SEAL_ENV_STRICT_SKIPS", switch)
    return pytester.runpytest("-rs", plugins=[conftest])


def test_an_import_skip_at_collection_fails_under_the_switch_and_is_a_skip_without_it(pytester, monkeypatch):
    pytester.makepyfile(test_fine=FINE, test_import_skip=IMPORT_SKIP)
    result = run(pytester, monkeypatch, "1")
    assert result.ret == pytest.ExitCode.INTERRUPTED  # a collection error: no test runs
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR collecting test_import_skip.py*",
            "*skipped, which SEAL_ENV_STRICT_SKIPS=1 does not allow: could not import 'seal_env_no_such_module'*",
        ]
    )
    for switch in (None, "0", ""):
        result = run(pytester, monkeypatch, switch)
        assert result.ret == pytest.ExitCode.OK
        result.assert_outcomes(passed=1, skipped=1)
        result.stdout.fnmatch_lines(["SKIPPED * test_import_skip.py:*: could not import 'seal_env_no_such_module'*"])


def test_skips_in_marks_fixtures_and_tests_fail_under_the_switch_and_are_skips_without_it(pytester, monkeypatch):
    pytester.makepyfile(test_fine=FINE, test_skips=SKIPS_IN_TESTS)
    result = run(pytester, monkeypatch, "1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)  # a skip at setup (mark, fixture) is an error
    result.stdout.fnmatch_lines_random(
        [
            "*does not allow: no widget in a mark*",
            "*does not allow: no widget in a fixture*",
            "*does not allow: no widget in the test*",
        ]
    )
    result = run(pytester, monkeypatch, None)
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_an_allowed_skip_passes_under_the_switch(pytester, monkeypatch):
    pytester.makepyfile(test_fine=FINE, test_allowed=ALLOWED)
    result = run(pytester, monkeypatch, "1")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(passed=1, skipped=2)
    result.stdout.fnmatch_lines_random(["SKIPPED * glibc < 2.33 has no mallinfo2", "SKIPPED * SQuAD loaded from*"])
    # the allow-list matches whole reasons: a longer one is not allowed
    pytester.makepyfile(
        test_more="import pytest\n\ndef test_x():\n    pytest.skip('glibc < 2.33 has no mallinfo2 or x')\n"
    )
    result = run(pytester, monkeypatch, "1")
    result.assert_outcomes(passed=1, skipped=2, failed=1)


def test_a_bad_switch_value_is_a_usage_error(pytester, monkeypatch):
    pytester.makepyfile(test_fine=FINE)
    result = run(pytester, monkeypatch, "yes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*SEAL_ENV_STRICT_SKIPS must be 1 (skips fail), 0 or empty, not 'yes'*"])


def test_every_test_has_a_time_limit(pytestconfig, pytester, monkeypatch):
    assert float(pytestconfig.getini("timeout")) == 600  # pyproject.toml, with pytest-timeout installed
    pytester.makepyfile(test_fine=FINE, test_hangs="import time\n\ndef test_hangs():\n    time.sleep(60)\n")
    monkeypatch.delenv("SEAL_ENV_STRICT_SKIPS", raising=False)
    result = pytester.runpytest("-o", "timeout=1", plugins=[conftest])
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_hangs.py::test_hangs - Failed: Timeout (>1.0s) from pytest-timeout."])
