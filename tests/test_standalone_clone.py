"""The repository stands alone: a fresh clone, with nothing beside it, passes the unit part of the
suite with its own code and its own fixtures (tests/fixtures), not the checkout's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The unit part: every test file that reads tests/fixtures/ and needs neither Label Studio nor a
# model (the rest of the suite runs in CI from the checkout).
UNIT = [
    "tests/test_backend_planning.py",
    "tests/test_convert_cli.py",
    "tests/test_grammar.py",
    "tests/test_label_config.py",
    "tests/test_prompts.py",
    "tests/test_results.py",
    "tests/feedback/test_feedback_commands.py",
    "tests/feedback/test_feedback_export.py",
    "tests/feedback/test_feedback_metrics.py",
    "tests/feedback/test_feedback_reconcile.py",
    "tests/feedback/test_feedback_store.py",
    "tests/feedback/test_task_files.py",
]
# Runs pytest in this very process once it has checked where the code and the fixtures come from.
RUN_FROM_CLONE = """
import sys
from pathlib import Path

import pytest

import varco_labeler

root = Path.cwd()
assert Path(varco_labeler.__file__).is_relative_to(root), varco_labeler.__file__
status = pytest.main(sys.argv[1:])
helpers = sys.modules["helpers"]
assert helpers.FIXTURES.is_relative_to(root), helpers.FIXTURES
sys.exit(status)
"""


def test_a_fresh_clone_passes_the_unit_tests_alone(tmp_path: Path) -> None:
    clone = tmp_path / "varco-labeler"
    subprocess.run(
        ["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)],
        check=True,
        timeout=120,
    )
    missing = [path for path in UNIT if not (clone / path).is_file()]
    assert not missing, f"not committed: {missing}"
    env = {k: v for k, v in os.environ.items() if k not in ("VARCO_FIXTURES", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-c", RUN_FROM_CLONE, "-q", "-p", "no:cacheprovider", *UNIT],
        cwd=clone,
        env={**env, "PYTHONPATH": str(clone)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " passed" in done.stdout and " failed" not in done.stdout
