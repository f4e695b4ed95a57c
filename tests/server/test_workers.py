"""`baychat worker` refuses a broker whose log it cannot reach from another process."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.processes import baychat_command


def test_worker_needs_a_shared_broker(tmp_path: Path) -> None:
    env = {**os.environ, "BAYCHAT_DATA_DIR": str(tmp_path), "BAYCHAT_BROKER_URL": "memory://"}
    done = subprocess.run(
        [*baychat_command(), "worker"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "BAYCHAT_BROKER_URL=redis://" in done.stderr
