"""supervisord event listener: counts how often each program was started, for `make status`.

supervisord reports process state changes but keeps no restart count; this listener receives every
PROCESS_STATE_STARTING event and writes `{program: starts}` to the file given as its argument (atomically,
so `make status` never reads half a file). Started afresh with supervisord, so counts are per supervisord run.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from supervisor import childutils


def main(path: Path) -> None:
    starts: dict[str, int] = {}
    while True:
        headers, payload = childutils.listener.wait(sys.stdin, sys.stdout)
        if headers["eventname"] == "PROCESS_STATE_STARTING":
            name = childutils.get_headers(payload)["processname"]
            starts[name] = starts.get(name, 0) + 1
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(starts))
            os.replace(tmp, path)
        childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
