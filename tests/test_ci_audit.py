"""The CI dependency scan (.ci/audit.py) fails on a finding, and says plainly when the
vulnerability data could not be had instead of failing or passing silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

AUDIT = Path(__file__).resolve().parent.parent / ".ci" / "audit.py"


def run_with_stub(
    tmp_path: Path, report: object | None, stderr: str = "", rc: int = 0
) -> tuple[int, str]:
    """Run .ci/audit.py with a stand-in pip-audit that writes ``report`` (None: nothing)."""
    stub = tmp_path / "pip-audit"
    writer = ""
    if report is not None:
        writer = (
            "out = sys.argv[sys.argv.index('--output') + 1]\n"
            f"open(out, 'w').write({json.dumps(json.dumps(report))})\n"
        )
    stub.write_text(
        f"#!{sys.executable}\nimport sys\n{writer}sys.stderr.write({stderr!r})\nsys.exit({rc})\n"
    )
    stub.chmod(0o755)
    done = subprocess.run(
        [sys.executable, str(AUDIT)],
        env={**os.environ, "PIP_AUDIT": str(stub)},
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode, done.stdout


def test_a_known_vulnerability_fails_the_build(tmp_path: Path) -> None:
    report = {
        "dependencies": [
            {"name": "ok", "version": "1", "vulns": []},
            {
                "name": "badlib",
                "version": "0.1",
                "vulns": [{"id": "PYSEC-0000-1", "fix_versions": ["0.2"]}],
            },
        ]
    }
    rc, out = run_with_stub(tmp_path, report, rc=1)
    assert rc == 1
    assert "VULNERABLE: badlib 0.1: PYSEC-0000-1 (fixed in: 0.2)" in out


def test_a_clean_report_passes(tmp_path: Path) -> None:
    rc, out = run_with_stub(
        tmp_path, {"dependencies": [{"name": "ok", "version": "1", "vulns": []}]}
    )
    assert rc == 0
    assert "1 dependencies audited, no known vulnerability" in out


@pytest.mark.parametrize(
    ("report", "stderr", "rc"),
    [
        (None, "requests.exceptions.ConnectionError: Max retries exceeded", 1),
        ({"dependencies": [{"name": "x", "skip_reason": "Dependency not found on PyPI"}]}, "", 0),
    ],
    ids=["unreachable", "answered-for-nothing"],
)
def test_an_unreachable_data_source_is_reported_and_the_build_goes_on(
    tmp_path: Path, report: object | None, stderr: str, rc: int
) -> None:
    code, out = run_with_stub(tmp_path, report, stderr, rc)
    assert code == 0
    assert "DEPENDENCY SCAN NOT DONE" in out


def test_any_other_failure_of_the_scanner_fails_the_build(tmp_path: Path) -> None:
    code, out = run_with_stub(tmp_path, None, "ValueError: bad requirement", 2)
    assert code == 1
    assert "other than the network" in out
