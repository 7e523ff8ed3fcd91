"""The layering rule of DESIGN.md, checked: imports run one way (data, then tasks, training and
evaluation, then deployment, then jobs, then defs), and the library layers never import Dagster
(`.importlinter` holds the contracts)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_imports_run_one_way_and_the_library_never_imports_dagster():
    linter = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(linter), "--config", str(REPO / ".importlinter")], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout
