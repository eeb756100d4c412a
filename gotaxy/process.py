"""
Ending the twistd process with a status code.

twistd always exits 0 after the reactor stops; a client whose token is
refused must exit non-zero so that systemd, Docker and scripts see the
failure (retrying cannot fix it).  ``exit_with`` stops the reactor and
registers an exit hook that ends the process with ``code`` once twistd has
finished its own shutdown.
"""

from __future__ import annotations

import atexit
import os
import sys
from typing import Any


def _exit_now(code: int) -> None:
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def exit_with(reactor: Any, code: int) -> None:
    atexit.register(_exit_now, code)
    if reactor.running:
        reactor.stop()
