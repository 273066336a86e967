"""Ending a service's own process when it cannot go on, so its supervisor restarts it.

The service asks its HTTP server to shut down (handlers in flight finish, the
shutdown hooks run) and the process then exits with a non-zero status: `make run`'s
restarter, compose's `restart:` and Kubernetes all start it again.
"""

import logging
import os
import signal
import sys
from typing import Protocol

log = logging.getLogger(__name__)

# "Internal software error" (sysexits.h): a service that stopped working by itself.
EXIT_UNRECOVERABLE = 70


class _Server(Protocol):
    should_exit: bool


class _State:
    server: _Server | None = None
    code = 0


def attach_server(server: _Server) -> None:
    """The server whose shutdown ends this process (see `shared.worker.serve`)."""
    _State.server = server


def exit_code() -> int:
    return _State.code


def exit_process(reason: str, code: int = EXIT_UNRECOVERABLE) -> None:
    """Log why, shut the server down, and make the process exit with `code`."""
    log.critical("%s; exiting with status %d so that the service is restarted", reason, code)
    _State.code = code
    if _State.server is not None:
        _State.server.should_exit = True
        return
    # No server of ours (run some other way): the default SIGTERM ends the process.
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGTERM)
