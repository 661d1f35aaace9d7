"""Issue 11: the unit and contract suites pass whatever the wall clock says.

The suite once failed from 16:00 to 24:00 UTC, when the date in China differs from the date in UTC. Here it
runs itself under libfaketime (Debian's `faketime`) in a child pytest, starting seconds before midnight China
time on the eve of a leap day: the run crosses midnight into 29 February in China, while UTC is still on the 28th
(the date in China differs from the date in UTC for the rest of the run). One child, about 90 s.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
WALL_TIMES_UTC = ["2028-02-28 15:59:50"]


@pytest.mark.parametrize("wall_utc", WALL_TIMES_UTC)
def test_unit_and_contract_suites_pass_at_this_wall_time(wall_utc: str) -> None:
    faketime = shutil.which("faketime")
    assert faketime, "faketime is installed by `make setup` (Debian package faketime)"
    # A relative shift: libfaketime's absolute mode breaks Python's time.sleep (EINVAL from clock_nanosleep).
    shift_s = int(datetime.fromisoformat(wall_utc).replace(tzinfo=UTC).timestamp() - time.time())
    env = {**os.environ, "TZ": "UTC"}
    done = subprocess.run([faketime, "-f", f"{shift_s:+d}", sys.executable, "-m", "pytest", "-q", "-x",
                           "-p", "no:cacheprovider", "tests/unit", "tests/contract",
                           f"--ignore={Path(__file__).relative_to(ROOT)}"],  # the child does not recurse
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, f"suite failed with the wall clock at {wall_utc} UTC:\n{done.stdout[-3000:]}"
    assert " passed" in done.stdout
