"""Run one command, and start it again with backoff whenever it exits by itself.

`make run` runs each service under this wrapper, because honcho (which multiplexes
the services' logs in one terminal) stops every process as soon as one exits: a
worker that exits non-zero after it lost its consumer groups, or that crashed,
would take the whole system down with it. Here only that service restarts, after
1 s, then 2, 4, ... up to 30 s while it keeps failing quickly; a run that lasted a
minute resets the delay. SIGTERM or SIGINT (honcho's Ctrl-C) are passed to the
command, which is then not restarted; the wrapper exits with its status.

    python -m scripts.keep_running -- python -m services.responder
"""

import logging
import signal
import subprocess
import sys
import threading
import time
from types import FrameType

from shared.logs import setup_logging

log = logging.getLogger("keep_running")

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
# A run at least this long was healthy: the next failure starts the backoff over.
STABLE_AFTER_S = 60.0


def describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def exit_status(code: int) -> int:
    """A child's return code as a shell reports it (128 + n for signal n)."""
    return 128 - code if code < 0 else code


class Runner:
    def __init__(self, command: list[str]) -> None:
        self.command = command
        self._stopping = threading.Event()
        self._child: subprocess.Popen[bytes] | None = None

    def stop(self, signum: int, _frame: FrameType | None = None) -> None:
        self._stopping.set()
        child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def run(self) -> int:
        delay = FIRST_DELAY_S
        while True:
            started = time.monotonic()
            self._child = subprocess.Popen(self.command)
            code = self._child.wait()
            if self._stopping.is_set():
                # Ended by the signal we passed on: a clean stop, as asked.
                return 0 if -code in (signal.SIGTERM, signal.SIGINT) else exit_status(code)
            if code == 0:
                return 0
            if time.monotonic() - started >= STABLE_AFTER_S:
                delay = FIRST_DELAY_S
            log.warning(
                "%s %s; starting it again in %.0f s",
                " ".join(self.command),
                describe(code),
                delay,
            )
            if self._stopping.wait(delay):
                return exit_status(code)
            delay = min(delay * 2, MAX_DELAY_S)


def main(argv: list[str]) -> int:
    command = argv[1:] if argv[:1] == ["--"] else argv
    if not command:
        sys.exit("usage: python -m scripts.keep_running -- COMMAND [ARG ...]")
    setup_logging("INFO")
    runner = Runner(command)
    signal.signal(signal.SIGTERM, runner.stop)
    signal.signal(signal.SIGINT, runner.stop)
    return runner.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
