# -*- test-case-name: tests.test_oslimits -*-
"""
Operating-system limits a public server runs into, and what Gotaxy does
about them.

Listen backlog
    The queue of connections the kernel has completed but the process has
    not accepted yet.  Twisted's default is 50: a burst of a few hundred
    connects (a busy minute, a reconnect storm after a restart, a flood)
    overflows it, and every overflow costs a client a SYN retransmission (1 s,
    then 3 s ...).  Every Gotaxy listener (control port, tunnel ports, web
    panel, SSH console) asks for ``LISTEN_BACKLOG``; the kernel silently caps
    it at ``net.core.somaxconn`` (and half-open connections at
    ``net.ipv4.tcp_max_syn_backlog``), so the server says at start when that
    cap is lower.  ``gotaxy.listeners.listen_at`` puts it into every
    listening endpoint string the server makes from an address and port.

File descriptors
    Every tunneled connection costs one descriptor on the client (to the
    local service) and one on the server (the public connection), so the
    usual soft limit of 1,024 ends a busy tunnel early.  Both processes raise
    their soft ``RLIMIT_NOFILE`` to the hard limit at start
    (``raise_fd_limit``, logged once), the systemd units raise the hard limit
    (``LimitNOFILE``), and running out (``EMFILE``/``ENFILE``) is reported as
    what it is (``fd_exhaustion``), not as an unreachable local service;
    on a tunnel's public port, Twisted's per-connection "EMFILE" lines are
    replaced by one report per interval (``watch_accepts``).
"""

from __future__ import annotations

import errno
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.logger import Logger

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

#: Backlog every Gotaxy listener asks for (capped by net.core.somaxconn).
LISTEN_BACKLOG = 4096

SOMAXCONN_PATH = "/proc/sys/net/core/somaxconn"

#: When the hard limit is "unlimited", raise the soft limit this far (Linux
#: refuses an infinite RLIMIT_NOFILE; fs.nr_open is usually 1048576).
UNLIMITED_FD_TARGET = 1048576

#: A descriptor limit below this is too low for a busy tunnel: said as a warning.
LOW_FD_LIMIT = 4096

_FD_ERRNOS = (errno.EMFILE, errno.ENFILE)


def somaxconn(path: str = SOMAXCONN_PATH) -> Optional[int]:
    """The kernel's cap on listen backlogs, or None where it cannot be read."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def listen_backlog(path: str = SOMAXCONN_PATH) -> int:
    """The backlog a Gotaxy listener gets: ``LISTEN_BACKLOG``, or the kernel's lower cap."""
    cap = somaxconn(path)
    return LISTEN_BACKLOG if cap is None or cap <= 0 else min(LISTEN_BACKLOG, cap)


def backlog_warning(path: str = SOMAXCONN_PATH) -> Optional[str]:
    """A sentence for the log when the kernel caps the backlog below ``LISTEN_BACKLOG``."""
    cap = somaxconn(path)
    if cap is None or cap >= LISTEN_BACKLOG:
        return None
    return (
        f"net.core.somaxconn is {cap}, so listen backlogs are capped at {cap} instead of "
        f"{LISTEN_BACKLOG}; on a busy public server raise it: "
        f"sysctl -w net.core.somaxconn={LISTEN_BACKLOG} net.ipv4.tcp_max_syn_backlog={LISTEN_BACKLOG}"
    )


# -- file descriptors -----------------------------------------------------------


def fd_limit() -> Optional[int]:
    """The soft limit on open file descriptors, or None where there is none to read."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def raise_fd_limit() -> Tuple[Optional[int], str]:
    """
    Raise the soft RLIMIT_NOFILE to the hard limit.  Return the limit now in
    force and one sentence for the log saying what was done.
    """
    if resource is None:
        return None, "file descriptor limit: not applicable on this system"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_FD_TARGET if hard == resource.RLIM_INFINITY else hard
    advice = "" if target >= LOW_FD_LIMIT else (
        f"; every tunneled connection needs one, so raise LimitNOFILE (systemd) or ulimit -Hn to {LOW_FD_LIMIT} or more"
    )
    if soft == resource.RLIM_INFINITY or soft >= target:
        limit = None if soft == resource.RLIM_INFINITY else soft
        return limit, f"file descriptor limit: {soft} (already the hard limit){advice}"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as e:
        return soft, f"file descriptor limit stays at {soft}: raising it to {target} failed ({e})"
    return target, f"file descriptor limit raised from {soft} to {target} (the hard limit){advice}"


def is_fd_exhaustion(error: BaseException) -> bool:
    """Whether ``error`` (an OSError or a Twisted connect/listen error) means no descriptor was left."""
    for value in (
        getattr(error, "osError", None),
        getattr(error, "errno", None),
        getattr(getattr(error, "socketError", None), "errno", None),
    ):
        if value in _FD_ERRNOS:
            return True
    args = getattr(error, "args", ())
    return bool(args) and args[0] in _FD_ERRNOS


def fd_exhaustion(limit: Optional[int] = None) -> str:
    """What to say when the process is out of descriptors."""
    if limit is None:
        limit = fd_limit()
    shown = "unknown" if limit is None else str(limit)
    return f"out of file descriptors (limit {shown}): raise LimitNOFILE / ulimit -n"


#: Descriptors a process needs besides its tunneled connections (listeners,
#: the control connection, the store, log files, health checks).
FD_HEADROOM = 256


def streams_fd_warning(limit: Optional[int], streams: int, what: str) -> Optional[str]:
    """
    A sentence for the log when ``limit`` descriptors cannot carry ``streams``
    tunneled connections (``what`` names the setting or side that allows
    them), or None when it can (or there is no limit).
    """
    needed = streams + FD_HEADROOM
    if limit is None or limit >= needed:
        return None
    return (
        f"file descriptor limit {limit} is below the {needed} that {what} needs (one descriptor per tunneled "
        f"connection, {streams}, and {FD_HEADROOM} besides): connections past about {max(0, limit - FD_HEADROOM)} "
        f"will fail; raise LimitNOFILE (systemd) or ulimit -Hn to {needed} or more"
    )


def log_fd_limit(log: Any, streams: int = 0, what: str = "") -> None:
    """
    Raise the descriptor limit at process start and log it once (a warning
    if it stays low, or below what ``streams`` connections need: ``streams_fd_warning``).
    """
    limit, message = raise_fd_limit()
    if limit is not None and limit < LOW_FD_LIMIT:
        log.warn("{message}", message=message)
    else:
        log.info("{message}", message=message)
    short = streams_fd_warning(limit, streams, what) if streams else None
    if short is not None:
        log.warn("{message}", message=short)


#: What Twisted logs when a listening port turns a connection away for want
#: of a descriptor (it then closes the connection itself).
_ACCEPT_EXHAUSTION_FORMATS = ("EMFILE encountered", "EMFILE recovery", "Re-reserving EMFILE")


def watch_accepts(port: Any, exhausted: Callable[[], None]) -> None:
    """
    Call ``exhausted`` each time the Twisted TCP ``port`` turns a connection
    away because the process is out of descriptors, instead of Twisted's own
    info lines (three per refused connection, which say "EMFILE" and nothing
    a user can act on).  A port without Twisted's accept logger (a test
    double, another Twisted) is left alone.
    """
    logger = getattr(port, "_logger", None)
    forward = getattr(logger, "observer", None)
    if forward is None:
        return

    def observe(event: Dict[str, Any]) -> None:
        text = str(event.get("log_format", ""))
        if text.startswith(_ACCEPT_EXHAUSTION_FORMATS):
            if text.startswith("EMFILE encountered"):
                exhausted()
            return
        if text.startswith("Could not accept new connection") and event.get("acceptError") in ("EMFILE", "ENFILE"):
            exhausted()
            return
        forward(event)

    port._logger = Logger(namespace=logger.namespace, observer=observe)
