"""
The operator console: ``ssh -p 7022 admin@server`` to inspect and steer a
live server, interactively or one command at a time.

* ``commands``: the command language (parsing, tables, ``--json``), pure;
* ``session``: what a session channel runs (line editor, one-shot commands);
* ``service``: host key, log-in, and the listening SSH server.
"""

from gotaxy.console.commands import Commands, Result
from gotaxy.console.service import ConsoleAccess, ConsoleService, make_console_service

__all__ = ["Commands", "Result", "ConsoleAccess", "ConsoleService", "make_console_service"]
