"""The collector settings the long-running processes start with (``server.gcpolicy``)."""

from __future__ import annotations

import subprocess
import sys

from server import gcpolicy


def test_tune_freezes_what_start_up_made_and_raises_the_thresholds() -> None:
    # In a child process: the settings are process-wide, and this one runs other tests.
    code = (
        "import gc; from server import gcpolicy; gcpolicy.tune();"
        " print(gc.get_threshold(), gc.get_freeze_count() > 1000, gc.isenabled())"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == f"{gcpolicy.THRESHOLDS} True True"
