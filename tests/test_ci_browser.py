"""CI cannot pass without the browser test: with ATJAX_REQUIRE_BROWSER=1 (set by .ci/run) a
missing Chromium is an error, not a skip."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

TESTS = pathlib.Path(__file__).resolve().parent


def _run_browser_tests(tmp_path, required: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=str(tmp_path))  # no chromium, no chromedriver on PATH
    env.pop("ATJAX_REQUIRE_BROWSER", None)
    if required:
        env["ATJAX_REQUIRE_BROWSER"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         str(TESTS / "test_serve_browser.py")],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300)


def test_missing_browser_fails_when_required(tmp_path):
    result = _run_browser_tests(tmp_path, required=True)
    assert result.returncode != 0, result.stdout
    assert "ATJAX_REQUIRE_BROWSER=1 but headless browser test needs Chromium" in result.stdout


def test_missing_browser_skips_otherwise(tmp_path):
    result = _run_browser_tests(tmp_path, required=False)
    assert result.returncode == 0, result.stdout
    assert "skipped" in result.stdout


def test_ci_script_requires_the_browser():
    script = (TESTS.parent / ".ci" / "run").read_text()
    assert "export ATJAX_REQUIRE_BROWSER=1" in script
    assert "|| echo" not in script  # a failed install is not turned into a warning
