"""The plain run docs/api.md promises: `schemathesis run --checks all` from the
repository root (so that schemathesis.toml applies) against `hairfluencer dev` on its
defaults, its real rate limits and quotas included, as an app developer would run it.
Every phase: examples, coverage, fuzzing, and stateful along the document's links.

Its own `.ci/run` step (minutes: the run keeps to the API's rate). The seed is fixed
so that CI draws the same cases each time; run it by hand without `--seed` to draw
new ones."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_dev_stack import dev_stack

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).resolve().parents[2]
SCHEMATHESIS = str(Path(sys.executable).with_name("schemathesis"))
SEED = "20261201"
BUDGET_SECONDS = 720


@pytest.mark.timeout(BUDGET_SECONDS + 180)  # the stack's start and stop besides the run
def test_a_plain_schemathesis_run_against_the_running_system_passes(tmp_path):
    with dev_stack(tmp_path) as system:
        run = subprocess.run(
            [SCHEMATHESIS, "run", f"{system['base']}/openapi.json", "--checks", "all",
             "-H", f"Authorization: Bearer {system['token']}", "--seed", SEED,
             "--no-color"],
            cwd=ROOT, capture_output=True, text=True, timeout=BUDGET_SECONDS)
    summary = run.stdout[run.stdout.find("SUMMARY"):]
    print(summary)
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    counts = re.search(r"(\d+) generated, (\d+) passed", summary)
    assert counts and counts[1] == counts[2] and int(counts[1]) > 1000, summary
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
