"""
The operator console: ``ssh -p 7022 admin@server`` to inspect and steer a
live server, interactively or one command at a time.

* ``commands``: the command language (parsing, tables, ``--json``), pure;
* ``session``: what a session channel runs (line editor, one-shot commands);
* ``listener``: the console's port, and the SSH server behind it made at
  the first connection (so that a server imports Conch only when used);
* ``service``: the SSH server: host key, log-in, sessions.
"""

from gotaxy.console.commands import Commands, Result
from gotaxy.console.listener import ConsoleAccess, ConsoleService, make_console_service

__all__ = ["Commands", "Result", "ConsoleAccess", "ConsoleService", "make_console_service"]
