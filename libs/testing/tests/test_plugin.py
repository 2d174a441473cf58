"""The suite's plugin: a failed test that used a running platform reports the platform's
warnings and errors; a passing one reports nothing extra."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

TESTS = '''
from pathlib import Path

import pytest

from opsconductor_testing.platform import RunningPlatform


@pytest.fixture
def platform(tmp_path: Path) -> RunningPlatform:
    log = tmp_path / "platform.log"
    log.write_text(
        '{"level": "info", "message": "run requested"}\\n'
        '{"level": "warning", "message": "service unavailable", "app_id": "executor"}\\n'
        '{"app_id":"jobs","level":"error","msg":"sidecar says no"}\\n')
    return RunningPlatform(data_dir=tmp_path, port=1, env={}, log_path=log)


def test_fails(platform: RunningPlatform) -> None:
    assert False


def test_passes(platform: RunningPlatform) -> None:
    assert True
'''


def test_a_failed_test_shows_the_platforms_warnings(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_uses_platform=TESTS)
    result = pytester.runpytest_subprocess("-p", "opsconductor_testing.plugin", "-rN")
    result.assert_outcomes(passed=1, failed=1)
    shown = result.stdout.str()
    assert "platform log (embedded): warnings and errors" in shown
    assert "service unavailable" in shown and "sidecar says no" in shown
    assert "run requested" not in shown
    assert shown.count("platform log (embedded)") == 1
