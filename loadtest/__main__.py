"""``python -m loadtest SCENARIO [options]``."""

from __future__ import annotations

from loadtest.cli import main

main()
