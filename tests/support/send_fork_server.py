"""The fault-injection tests' fork server for `email_jobs.send_worker`.

    python -m tests.support.send_fork_server

reads one JSON object a line, `{"argv": [...], "env": {...}, "kill_at": "POINT:N"}`, forks a
child that runs the worker with that environment and kill point (email_jobs.faults), and answers
`{"returncode": N}` (-9 for a SIGKILL). The fork skips the interpreter start and imports, which
are most of a short run's cost; the child is a real process, killed for real.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

from email_jobs import faults
from email_jobs.send_worker import main


def serve() -> int:
    """Serve fork requests from stdin until it closes (see the module docstring)."""
    for line in sys.stdin:
        command = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: its output must not mix with the answers
            code = 1
            try:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, sys.stdout.fileno())
                os.environ.update(command.get("env") or {})
                faults.arm(command.get("kill_at"))
                code = main(command.get("argv") or [])
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"returncode": code}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve())
