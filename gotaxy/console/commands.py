# -*- test-case-name: tests.test_console_commands -*-
"""
The console's command language: parsing and running.

Everything here is independent of SSH and terminals.  ``Commands.run(line)``
takes one line as the operator typed it and returns a ``Result``: the text
to print, an exit status (0 success, 1 the action failed, 2 the command or
its arguments are wrong) and, for the few commands that need the terminal
(``watch``, ``python``, ``exit``), an ``action`` the session carries out.
The interactive session and the one-shot ``ssh host COMMAND`` both go
through ``run``, so they accept the same commands and print the same text.

All rules live in ``Management`` (shared with the web panel); this module
only turns words into calls, and ``gotaxy.console.text`` turns the records
into text.  Every listing takes ``--json`` and then prints JSON instead.

A command never raises: a usage problem or a ``ManagementError`` becomes one
line saying what is wrong and where to get help, and an unexpected exception
is logged with its traceback and reported as an internal error.
"""

from __future__ import annotations

import json
import shlex
import textwrap
from typing import Any, Awaitable, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

import attrs
from twisted.logger import Logger

from gotaxy.units import format_rate
from gotaxy.console.text import (
    WIDTH,
    access_text,
    as_json,
    bans_table,
    certificates_table,
    client_detail,
    clients_table,
    events_table,
    human_time,
    mail_table,
    nodes_table,
    status_pairs,
    tokens_table,
    limits_text,
    tunnel_detail,
    tunnel_ref,
    tunnels_table,
    webhooks_table,
)
from gotaxy.events import QUERY_TYPES
from gotaxy.logs import gotaxy_observer
from gotaxy.proxy import SpecError, registry
from gotaxy.server.domains import MAX_ALLOWED_DOMAINS
from gotaxy.server.manage import Management, ManagementError, TunnelView
from gotaxy.store.overrides import KEYS as LIVE_KEYS

log = Logger(observer=gotaxy_observer, namespace="gotaxy.console")

MAX_LINE = 1024  #: longest command line accepted, in characters
MAX_EVENTS = 1000  #: most events one ``events`` command prints

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


@attrs.frozen
class Result:
    text: str = ""
    status: int = EXIT_OK
    action: Optional[str] = None  #: "exit", "watch" or "python", for the session


class UsageError(Exception):
    """A command or its arguments are wrong; ``topic`` is where help is."""

    def __init__(self, message: str, topic: Optional[str] = None) -> None:
        super().__init__(message)
        self.topic = topic


# -- the commands ------------------------------------------------------------


@attrs.frozen
class Command:
    name: str  #: as typed, e.g. "tunnel add"
    usage: str
    summary: str
    details: str = ""
    options: Dict[str, bool] = attrs.Factory(dict)  #: option -> takes a value
    positional: Tuple[int, int] = (0, 0)  #: fewest, most
    #: also takes ``--KEY VALUE`` for the settings of the proxy types (``options["spec"]``: key -> text)
    spec_keys: bool = False


def _json_option(**more: bool) -> Dict[str, bool]:
    return {"--json": False, **more}


COMMANDS: Dict[str, Command] = {c.name: c for c in [
    Command("help", "help [COMMAND]", "list the commands, or explain one", positional=(0, 2)),
    Command("status", "status [--json]", "version, uptime, counts and traffic", options=_json_option()),
    Command("clients", "clients [--json]", "every client the server knows, online or not", options=_json_option()),
    Command("nodes", "nodes [--json]", "every server node on this database: up or down, its clients and traffic",
            details="The node answering is marked *. A node is down when it stopped renewing its lease (30 s) "
                    "and its clients are not released yet; a node that stopped cleanly leaves the list.",
            options=_json_option()),
    Command("client", "client NAME [--json]", "one client in detail", options=_json_option(), positional=(1, 1)),
    Command("kick", "kick NAME", "disconnect a client (it reconnects unless its token is revoked)",
            positional=(1, 1)),
    Command("tunnels", "tunnels [--client NAME] [--json]", "every tunnel with its public address, status and rates",
            options=_json_option(**{"--client": True})),
    Command("tunnel", "tunnel TUNNEL [--json]", "one tunnel in detail, with connections and rates",
            details="TUNNEL is CLIENT/NAME, or just NAME when only one client has a tunnel of that name.",
            options=_json_option(), positional=(1, 1)),
    Command("tunnel add", "tunnel add CLIENT NAME LOCALHOST:PORT [PUBLICPORT] [--type TYPE] [--KEY VALUE] [--json]",
            "define a tunnel for a client; it opens now if the client is online",
            details="PUBLICPORT 0 or left out lets the server pick one (and keep it). "
                    "IPv6 local addresses go in brackets: [::1]:5432. TYPE is tcp (the default) or another "
                    "type below; --KEY VALUE sets one of its settings by frp's key (--localPort 53), and "
                    "LOCALHOST:PORT and PUBLICPORT are short for --localIP, --localPort and --remotePort.",
            options=_json_option(**{"--type": True}), positional=(2, 4), spec_keys=True),
    Command("tunnel edit", "tunnel edit TUNNEL [--local HOST:PORT] [--port PUBLICPORT] [--KEY VALUE] [--json]",
            "change a tunnel defined here (not in the client's own config)",
            details="--KEY VALUE changes one setting of the tunnel's type by frp's key; an empty VALUE ('') "
                    "puts it back to its default. --local and --port are short for --localIP with --localPort, "
                    "and --remotePort.",
            options=_json_option(**{"--local": True, "--port": True}), positional=(1, 1), spec_keys=True),
    Command("tunnel remove", "tunnel remove TUNNEL", "delete a tunnel defined here, cutting its connections",
            positional=(1, 1)),
    Command("tunnel enable", "tunnel enable TUNNEL [--json]", "let a disabled tunnel open again",
            options=_json_option(), positional=(1, 1)),
    Command("tunnel disable", "tunnel disable TUNNEL [--json]",
            "close a tunnel's public port and keep it closed, cutting its connections",
            options=_json_option(), positional=(1, 1)),
    Command("tunnel restart", "tunnel restart TUNNEL [--json]",
            "close a tunnel (cutting its connections) and open it again on its port",
            options=_json_option(), positional=(1, 1)),
    Command("tokens", "tokens [--json]", "the client tokens (names and dates; never the tokens)",
            options=_json_option()),
    Command("token create", "token create NAME [--domains LIST] [--json]",
            "make a token for client NAME; it is shown once, now",
            "--domains: the custom domains its client may claim, such as shop.example.com,*.shop.example.com "
            "(none: those the server's allowDomains allow).",
            options=_json_option(**{"--domains": True}), positional=(1, 1)),
    Command("token domains", "token domains NAME [DOMAIN ...] [--json]",
            "set the custom domains client NAME may claim (none: what the server allows)",
            "A DOMAIN is a name (shop.example.com) or *.example.com for any name under it; the list applies "
            "to every claim from now on.", options=_json_option(), positional=(1, MAX_ALLOWED_DOMAINS + 1)),
    Command("token revoke", "token revoke NAME", "revoke a token; its client is cut off at once",
            positional=(1, 1)),
    Command("certs", "certs [--json]", "client certificates issued and revoked, and if the server asks for one",
            options=_json_option()),
    Command("cert issue", "cert issue NAME [--days N] [--json]",
            "sign a client certificate with the server's CA; its key is shown once only",
            options=_json_option(**{"--days": True}), positional=(1, 1)),
    Command("cert revoke", "cert revoke SERIAL|NAME [--json]",
            "revoke a client certificate; its client is cut off within seconds",
            options=_json_option(), positional=(1, 1)),
    Command("token limit", "token limit NAME RATE [--json]",
            "set a client's own bandwidth limit, each way (\"10MB\"; 0: the default)", options=_json_option(), positional=(2, 2)),
    Command("limits", "limits [--json]",
            "bandwidth and connection limits in force, and each client's bandwidth",
            options=_json_option()),
    Command("limits set", "limits set KEY RATE [--json]",
            "set maxBandwidth or maxBandwidthPerClient live, on every server",
            details="RATE is bytes a second each way, such as 100MB or 512KB (KB = 1024); 0 is no limit. "
                    "Open connections follow at once, none is dropped. The live value is kept in the store "
                    "(across restarts, for every server on it) and wins over server.toml, also after a reload, "
                    "until 'limits clear KEY'.",
            options=_json_option(), positional=(2, 2)),
    Command("limits clear", "limits clear KEY [--json]",
            "drop a live maxBandwidth or maxBandwidthPerClient: server.toml's applies",
            options=_json_option(), positional=(1, 1)),
    Command("notify", "notify [--json]", "the webhooks that events are sent to", options=_json_option()),
    Command("notify add", "notify add NAME URL [--events LIST] [--format FORMAT] [--secret SECRET] [--json]",
            "send events to a webhook from now on (kept across restarts)",
            details="LIST is comma-separated event types or families such as client.disconnected,tunnel.* "
                    "(default: all). FORMAT is json (default), slack, dingtalk or feishu. With a SECRET every "
                    "request carries an HMAC-SHA256 signature (docs/notifications.md).",
            options=_json_option(**{"--events": True, "--format": True, "--secret": True}), positional=(2, 2)),
    Command("notify remove", "notify remove NAME", "stop sending to a webhook added here", positional=(1, 1)),
    Command("notify test", "notify test NAME", "send a test notification to one webhook", positional=(1, 1)),
    Command("mail", "mail [--json]", "who gets notification e-mail", options=_json_option()),
    Command("mail add", "mail add ADDRESS [--events LIST] [--json]",
            "mail events to ADDRESS from now on (kept across restarts)",
            details="LIST is comma-separated event types or families such as client.disconnected,tunnel.* "
                    "(default: all). Bursts of events within smtp.batchSeconds become one message.",
            options=_json_option(**{"--events": True}), positional=(1, 1)),
    Command("mail remove", "mail remove ADDRESS", "stop mailing a recipient added here", positional=(1, 1)),
    Command("mail test", "mail test ADDRESS", "send a test e-mail to a recipient", positional=(1, 1)),
    Command("events", "events [--type TYPE] [--client NAME] [--limit N] [--json]",
            "the event log, newest first",
            details=f"TYPE is an event type such as tunnel.opened, or a family ending in '.' such as "
                    f"'tunnel.'. N is 1-{MAX_EVENTS} (default 20).",
            options=_json_option(**{"--type": True, "--client": True, "--limit": True})),
    Command("reload", "reload [--json]",
            "re-read the server's config file and apply what can change live",
            details="A file with an error changes nothing; the error names the key. Otherwise each changed "
                    "setting is listed as applied, or as needing a restart and why.",
            options=_json_option()),
    Command("access", "access [--json]",
            "the address rules and ban settings in force, and connections refused",
            options=_json_option()),
    Command("bans", "bans [--json]", "the banned addresses, with why and until when",
            options=_json_option()),
    Command("ban", "ban ADDRESS [--for SECONDS] [--reason TEXT] [--json]",
            "ban an IP address from every listener of every server on this store",
            details="SECONDS defaults to access.ban.time. The ban is kept across restarts; 'unban' lifts it.",
            options=_json_option(**{"--for": True, "--reason": True}), positional=(1, 1)),
    Command("unban", "unban ADDRESS", "lift an address's ban (and forget its earlier bans)", positional=(1, 1)),
    Command("watch", "watch", "live view of the tunnels and their rates until a key is pressed"),
    Command("python", "python", "a Python prompt with the live server objects (if console.python is on)"),
    Command("exit", "exit", "close the console (also: quit, logout, Ctrl-D)"),
]}

ALIASES = {"quit": "exit", "logout": "exit", "?": "help"}
GROUPS = {
    "tunnel": ("add", "edit", "remove", "enable", "disable", "restart"),
    "token": ("create", "domains", "limit", "revoke"),
    "cert": ("issue", "revoke"),
    "limits": ("set", "clear"),
    "notify": ("add", "remove", "test"),
    "mail": ("add", "remove", "test"),
}
TOP_LEVEL = sorted({name.split()[0] for name in COMMANDS} | set(ALIASES) - {"?"})


def parse_args(command: Command, words: Sequence[str]) -> Tuple[List[str], Dict[str, Any]]:
    """Split ``words`` into positional arguments and ``command``'s options."""
    positional: List[str] = []
    options: Dict[str, Any] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word.startswith("--") and len(word) > 2:
            name, eq, value = word.partition("=")
            if name not in command.options and command.spec_keys and name[2:] in _spec_keys():
                if not eq:
                    i += 1
                    if i >= len(words):
                        raise UsageError(f"{command.name}: {name} needs a value", command.name)
                    value = words[i]
                options.setdefault("spec", {})[name[2:]] = value
                i += 1
                continue
            if name not in command.options:
                raise UsageError(f"{command.name}: unknown option {name!r}", command.name)
            if command.options[name]:
                if not eq:
                    i += 1
                    if i >= len(words):
                        raise UsageError(f"{command.name}: {name} needs a value", command.name)
                    value = words[i]
                options[name] = value
            elif eq:
                raise UsageError(f"{command.name}: {name} takes no value", command.name)
            else:
                options[name] = True
        else:
            positional.append(word)
        i += 1
    low, high = command.positional
    if not low <= len(positional) <= high:
        if len(positional) > high:
            problem = f"unexpected argument {positional[high]!r}"
        else:
            problem = "missing " + command.usage.split()[len(command.name.split()) + len(positional)].strip("[]")
        raise UsageError(f"{command.name}: {problem}", command.name)
    return positional, options


def _spec_keys() -> Set[str]:
    """frp's keys of every registered proxy type (what ``--KEY`` may name)."""
    return {f.key for t in registry.types() for f in t.fields}


def _types_help(width: int) -> str:
    """Each proxy type with its keys, for the help of the commands that take them, wrapped to ``width``."""
    lines = ["Types and their keys (--KEY VALUE):"]
    for proxy_type in registry.types():
        lines.append(f"  {proxy_type.name}:")
        for f in proxy_type.fields:
            flags = " (required)" if f.required else f" (default {f.default})" if f.default not in (None, "") else ""
            shape = f"one of {', '.join(f.choices)}" if f.kind == "choice" else f.kind
            lines += textwrap.wrap(f"--{f.key} {shape.upper() if f.kind != 'choice' else shape}{flags}: {f.help}",
                                   width, initial_indent="    ", subsequent_indent="      ")
    return "\n".join(lines)


def _spec_values(proxy_type: Any, texts: Dict[str, str], topic: str, empty_is_default: bool = False) -> Dict[str, Any]:
    """The ``--KEY VALUE`` texts as values of ``proxy_type``'s settings."""
    values: Dict[str, Any] = {}
    for key, text in texts.items():
        field = proxy_type.field(key)
        if field is None:
            keys = ", ".join(f"--{f.key}" for f in proxy_type.fields)
            raise UsageError(f"{topic}: a {proxy_type.name} tunnel has no setting --{key} (it has {keys})", topic)
        if empty_is_default and text == "":
            values[key] = None
            continue
        try:
            values[key] = field.from_text(text)
        except SpecError as e:
            raise UsageError(f"{topic}: {e}", topic) from None
    return values


def _int(value: str, what: str, topic: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{topic}: {what} must be a number, not {value!r}", topic) from None


class Commands:
    """
    The command language bound to one live server.

    ``python_namespace`` is None when the Python prompt is not allowed for
    this operator; otherwise it is the dict the prompt starts with.
    """

    def __init__(self, management: Management, python_allowed: bool = False, width: int = WIDTH,
                 operator: str = "the console") -> None:
        self.management = management
        #: Who reloads, for the config.reloaded event ("console operator admin from 127.0.0.1:5555").
        self.operator = operator
        self.core = management.core
        self.python_allowed = python_allowed
        self.width = width
        #: names for tab completion, refreshed by ``refresh_names``
        self.client_names: Set[str] = set()
        self.tunnel_refs: Set[str] = set()
        self.token_names: Set[str] = set()
        self._handlers: Dict[str, Callable[[List[str], Dict[str, Any]], Awaitable[Result]]] = {
            "help": self._help,
            "status": self._status,
            "clients": self._clients,
            "client": self._client,
            "nodes": self._nodes,
            "kick": self._kick,
            "tunnels": self._tunnels,
            "tunnel": self._tunnel,
            "tunnel add": self._tunnel_add,
            "tunnel edit": self._tunnel_edit,
            "tunnel remove": self._tunnel_remove,
            "tunnel enable": self._tunnel_enable,
            "tunnel disable": self._tunnel_disable,
            "tunnel restart": self._tunnel_restart,
            "tokens": self._tokens,
            "token create": self._token_create,
            "token domains": self._token_domains,
            "token revoke": self._token_revoke,
            "certs": self._certs,
            "cert issue": self._cert_issue,
            "cert revoke": self._cert_revoke,
            "token limit": self._token_limit,
            "limits": self._limits,
            "limits set": self._limits_set,
            "limits clear": self._limits_clear,
            "notify": self._notify,
            "notify add": self._notify_add,
            "notify remove": self._notify_remove,
            "notify test": self._notify_test,
            "mail": self._mail,
            "mail add": self._mail_add,
            "mail remove": self._mail_remove,
            "mail test": self._mail_test,
            "events": self._events,
            "reload": self._reload,
            "access": self._access,
            "bans": self._bans,
            "ban": self._ban,
            "unban": self._unban,
            "watch": self._action("watch"),
            "python": self._python,
            "exit": self._action("exit"),
        }

    # -- entry points --------------------------------------------------------

    def lookup(self, words: Sequence[str]) -> Tuple[Command, List[str]]:
        """The command named by the first word(s), and the words after it."""
        first = ALIASES.get(words[0], words[0])
        if first in GROUPS and len(words) > 1 and words[1] in GROUPS[first]:
            return COMMANDS[f"{first} {words[1]}"], list(words[2:])
        if first == "token":
            raise UsageError(
                "token: say 'token create NAME', 'token domains NAME [DOMAIN ...]', 'token limit NAME RATE' or "
                "'token revoke NAME' ('tokens' lists them)", "token"
            )
        if first == "cert":
            raise UsageError(
                "cert: say 'cert issue NAME' or 'cert revoke SERIAL|NAME' ('certs' lists them)", "cert"
            )
        if first not in COMMANDS:
            raise UsageError(f"unknown command {words[0]!r}; type 'help' for the list of commands")
        return COMMANDS[first], list(words[1:])

    async def run(self, line: str) -> Result:
        """Run one command line; never raises."""
        if len(line) > MAX_LINE:
            return Result(f"the command is too long (more than {MAX_LINE} characters)", EXIT_USAGE)
        try:
            words = shlex.split(line)
        except ValueError as e:
            return Result(f"cannot read the command: {e}; type 'help' for the syntax", EXIT_USAGE)
        if not words:
            return Result()
        try:
            command, rest = self.lookup(words)
            positional, options = parse_args(command, rest)
            return await self._handlers[command.name](positional, options)
        except UsageError as e:
            hint = f"type 'help {e.topic}' for usage" if e.topic else ""
            message = str(e)
            return Result(f"{message}; {hint}" if hint else message, EXIT_USAGE)
        except ManagementError as e:
            return Result(f"error: {e}", EXIT_USAGE if e.kind == "invalid" else EXIT_FAILED)
        except Exception:
            log.failure("console command {line!r} failed", line=line[:200])
            return Result(f"internal error while running {words[0]!r}; the details are in the server's log",
                          EXIT_FAILED)

    async def refresh_names(self) -> None:
        """Re-read client, tunnel and token names for tab completion."""
        try:
            clients = await self.management.clients()
            tunnels = await self.management.tunnels()
            tokens = await self.management.tokens()
        except Exception:
            log.failure("reading names for completion failed")
            return
        self.client_names = {c.name for c in clients}
        counts: Dict[str, int] = {}
        for t in tunnels:
            counts[t.name] = counts.get(t.name, 0) + 1
        self.tunnel_refs = {tunnel_ref(t) for t in tunnels} | {n for n, c in counts.items() if c == 1}
        self.token_names = {t.name for t in tokens if t.revoked_at is None}

    def complete(self, before_cursor: str) -> List[str]:
        """The words that could finish the last (partial) word of ``before_cursor``."""
        words = before_cursor.split()
        if before_cursor and before_cursor[-1].isspace() or not words:
            words.append("")
        current, previous = words[-1], words[:-1]
        if not previous:
            candidates: Iterable[str] = TOP_LEVEL
        else:
            first = ALIASES.get(previous[0], previous[0])
            name = first
            if first in GROUPS and len(previous) >= 2 and previous[1] in GROUPS[first]:
                name = f"{first} {previous[1]}"
            command = COMMANDS.get(name)
            argument_index = len(previous) - len(name.split())
            if previous[-1] in ("--client",):
                candidates = self.client_names
            elif previous[-1] == "--type":
                candidates = QUERY_TYPES
            elif current.startswith("-"):
                candidates = list(command.options) if command is not None else []
            elif first == "help":
                if len(previous) == 1:
                    candidates = sorted({n.split()[0] for n in COMMANDS})
                else:
                    candidates = GROUPS.get(previous[1], ()) if len(previous) == 2 else ()
            elif name in GROUPS and argument_index == 0:
                candidates = list(GROUPS[name]) + (sorted(self.tunnel_refs) if name == "tunnel" else [])
            elif name == "kick" and argument_index == 0:
                candidates = list(self.core.sessions)  # only a connected client can be kicked
            elif name == "tunnel add" and argument_index == 0:
                candidates = self.client_names | self.token_names  # what add_tunnel accepts
            elif name == "client" and argument_index == 0:
                candidates = self.client_names
            elif name in ("token revoke", "token limit") and argument_index == 0:
                candidates = self.token_names
            elif name in ("limits set", "limits clear") and argument_index == 0:
                candidates = list(LIVE_KEYS)
            elif name.startswith("tunnel") and name != "tunnel add" and argument_index == 0:
                candidates = self.tunnel_refs
            else:
                candidates = []
        return sorted(c for c in set(candidates) if c.startswith(current))

    # -- helpers -------------------------------------------------------------

    def _action(self, action: str) -> Callable[[List[str], Dict[str, Any]], Awaitable[Result]]:
        async def handler(positional: List[str], options: Dict[str, Any]) -> Result:
            return Result(action=action)

        return handler

    async def resolve_tunnel(self, ref: str, topic: str) -> TunnelView:
        """``CLIENT/NAME``, or ``NAME`` when exactly one client has a tunnel of that name."""
        if "/" in ref:
            client, _, name = ref.partition("/")
            if not client or not name:
                raise UsageError(f"{topic}: {ref!r} is not a tunnel; write CLIENT/NAME or NAME", topic)
            return await self.management.tunnel(client, name)
        matches = [v for v in await self.management.tunnels() if v.name == ref]
        if not matches:
            raise ManagementError("not_found", f"no tunnel named {ref!r}; 'tunnels' lists them")
        if len(matches) > 1:
            owners = ", ".join(tunnel_ref(v) for v in matches)
            raise ManagementError("invalid", f"several clients have a tunnel named {ref!r} ({owners}); "
                                             f"say which, as CLIENT/NAME")
        return matches[0]


    def _tunnel_result(self, v: TunnelView, options: Dict[str, Any], what: str) -> Result:
        if options.get("--json"):
            return Result(as_json(v))
        return Result(f"tunnel {tunnel_ref(v)} {what}; status {v.status}"
                      + (f", {v.address.description}" if v.address is not None else ""))

    # -- handlers ------------------------------------------------------------

    async def _help(self, positional: List[str], options: Dict[str, Any]) -> Result:
        if not positional:
            width = max(len(c.usage) for c in COMMANDS.values())
            lines = ["Commands (add --json to any listing for JSON):", ""]
            for c in COMMANDS.values():
                usage = c.usage.replace(" [--json]", "")
                one_line = f"{usage.ljust(min(width, 30))}  {c.summary}"
                if len(one_line) <= self.width:
                    lines.append(one_line)
                else:
                    lines.append(usage)
                    lines.append(f"    {c.summary}")
            lines += ["", "Tab completes commands and names; Up/Down recall earlier commands.",
                      "TUNNEL is CLIENT/NAME, or NAME when only one client has that tunnel name."]
            return Result("\n".join(lines))
        topic = " ".join(ALIASES.get(w, w) for w in positional)
        if topic in GROUPS:
            group = [COMMANDS[topic]] if topic in COMMANDS else []
            group += [COMMANDS[f"{topic} {s}"] for s in GROUPS[topic]]
            return Result("\n".join(f"{c.usage}\n    {c.summary}" for c in group))
        command = COMMANDS.get(topic)
        if command is None:
            raise UsageError(f"help: no command {topic!r}; type 'help' for the list of commands")
        text = f"usage: {command.usage}\n{command.summary}"
        if command.details:
            text += "\n" + command.details
        if command.spec_keys:
            text += "\n" + _types_help(self.width)
        return Result(text)

    async def _status(self, positional: List[str], options: Dict[str, Any]) -> Result:
        s = await self.management.status()
        if options.get("--json"):
            return Result(as_json(s))
        return Result(status_pairs(s, self.width))

    async def _clients(self, positional: List[str], options: Dict[str, Any]) -> Result:
        views = await self.management.clients()
        if options.get("--json"):
            return Result(as_json(views))
        return Result(clients_table(views, self.width))


    async def _nodes(self, positional: List[str], options: Dict[str, Any]) -> Result:
        views = await self.management.nodes()
        if options.get("--json"):
            return Result(as_json(views))
        return Result(nodes_table(views, self.width))

    async def _client(self, positional: List[str], options: Dict[str, Any]) -> Result:
        view = await self.management.client(positional[0])
        if options.get("--json"):
            return Result(as_json(view))
        return Result(client_detail(view, self.width))

    async def _kick(self, positional: List[str], options: Dict[str, Any]) -> Result:
        await self.management.kick(positional[0])
        return Result(f"client {positional[0]} disconnected")

    async def _tunnels(self, positional: List[str], options: Dict[str, Any]) -> Result:
        views = await self.management.tunnels(options.get("--client"))
        if options.get("--json"):
            return Result(as_json(views))
        return Result(tunnels_table(views, self.width))

    async def _tunnel(self, positional: List[str], options: Dict[str, Any]) -> Result:
        view = await self.resolve_tunnel(positional[0], "tunnel")
        if options.get("--json"):
            return Result(as_json(view))
        return Result(tunnel_detail(view, self.width))

    async def _tunnel_add(self, positional: List[str], options: Dict[str, Any]) -> Result:
        topic = "tunnel add"
        client, name = positional[:2]
        type_name = options.get("--type", "tcp")
        proxy_type = registry.get(type_name)
        if proxy_type is None:
            known = ", ".join(registry.names())
            raise UsageError(f"{topic}: --type {type_name!r} is not a tunnel type of this server (it has {known})",
                             topic)
        keys: Dict[str, Any] = {"type": type_name}
        shorthand = {"LOCALHOST:PORT": ("localIP", "localPort"), "PUBLICPORT": ("remotePort",)}
        for (word, covers), given in zip(shorthand.items(), positional[2:]):
            if not all(proxy_type.field(key) for key in covers):
                raise UsageError(f"{topic}: a {type_name} tunnel has no {word}; give its settings as --KEY VALUE",
                                 topic)
            if word == "PUBLICPORT":
                keys["remotePort"] = _int(given, "PUBLICPORT", topic)
            else:
                keys.update(self.management.local_keys(given))
        keys.update(_spec_values(proxy_type, options.get("spec", {}), topic))
        if len(positional) == 2 and proxy_type.field("localPort") is not None and "localPort" not in keys:
            raise UsageError(f"{topic}: missing LOCALHOST:PORT", topic)
        view = await self.management.define_tunnel(client, name, keys)
        if options.get("--json"):
            return Result(as_json(view))
        online = client in self.core.sessions
        where = view.address.description if view.address is not None else "address picked by the server"
        return Result(f"tunnel {tunnel_ref(view)} added ({where}); "
                      + ("it opens now" if online else f"it opens when {client} connects"))

    async def _tunnel_edit(self, positional: List[str], options: Dict[str, Any]) -> Result:
        topic = "tunnel edit"
        view = await self.resolve_tunnel(positional[0], topic)
        changes: Dict[str, Any] = {}
        if "--local" in options:
            changes.update(self.management.local_keys(options["--local"]))
        if "--port" in options:
            changes["remotePort"] = _int(options["--port"], "--port", topic)
        if options.get("spec"):
            proxy_type = registry.get(view.type)
            if proxy_type is None:
                raise UsageError(f"{topic}: tunnel type {view.type!r} is not known to this server", topic)
            changes.update(_spec_values(proxy_type, options["spec"], topic, empty_is_default=True))
        if not changes:
            raise ManagementError("invalid", "nothing to change: give a local address (--local), a public port (--port) or a --KEY VALUE setting")
        updated = await self.management.change_tunnel(view.client, view.name, changes)
        return self._tunnel_result(updated, options, "changed")

    async def _tunnel_remove(self, positional: List[str], options: Dict[str, Any]) -> Result:
        view = await self.resolve_tunnel(positional[0], "tunnel remove")
        await self.management.remove_tunnel(view.client, view.name)
        return Result(f"tunnel {tunnel_ref(view)} removed")

    async def _tunnel_enable(self, positional: List[str], options: Dict[str, Any]) -> Result:
        view = await self.resolve_tunnel(positional[0], "tunnel enable")
        return self._tunnel_result(await self.management.set_enabled(view.client, view.name, True), options, "enabled")

    async def _tunnel_disable(self, positional: List[str], options: Dict[str, Any]) -> Result:
        view = await self.resolve_tunnel(positional[0], "tunnel disable")
        return self._tunnel_result(
            await self.management.set_enabled(view.client, view.name, False), options, "disabled"
        )

    async def _tunnel_restart(self, positional: List[str], options: Dict[str, Any]) -> Result:
        view = await self.resolve_tunnel(positional[0], "tunnel restart")
        return self._tunnel_result(
            await self.management.restart_tunnel(view.client, view.name), options, "restarted"
        )

    async def _tokens(self, positional: List[str], options: Dict[str, Any]) -> Result:
        records = await self.management.tokens()
        if options.get("--json"):
            return Result(as_json(records))
        return Result(tokens_table(records, self.core.reactor.seconds(), self.width))

    async def _token_create(self, positional: List[str], options: Dict[str, Any]) -> Result:
        record, token = await self.management.create_token(positional[0], allow_domains=options.get("--domains") or ())
        if options.get("--json"):
            return Result(json.dumps({"name": record.name, "token": token, "created_at": record.created_at}, indent=2))
        return Result(f"token for client {record.name} (shown only now; keep it):\n{token}")

    async def _token_domains(self, positional: List[str], options: Dict[str, Any]) -> Result:
        record = await self.management.set_token_domains(positional[0], positional[1:])
        if options.get("--json"):
            return Result(as_json(record))
        if record.allow_domains:
            return Result(f"client {record.name} may claim: {', '.join(record.allow_domains)}")
        return Result(f"client {record.name} may claim the custom domains the server allows")

    async def _token_revoke(self, positional: List[str], options: Dict[str, Any]) -> Result:
        await self.management.revoke_token(positional[0])
        return Result(f"token {positional[0]} revoked; its client is cut off")


    async def _certs(self, positional: List[str], options: Dict[str, Any]) -> Result:
        settings = self.management.certificate_settings()
        certificates = await self.management.certificates()
        if options.get("--json"):
            return Result(json.dumps({**settings, "certificates": certificates}, indent=2))
        return Result(certificates_table(settings, certificates, self.width))

    async def _cert_issue(self, positional: List[str], options: Dict[str, Any]) -> Result:
        days = _int(options["--days"], "--days", "cert issue") if "--days" in options else 365
        issued = await self.management.issue_certificate(positional[0], days, self.operator)
        if options.get("--json"):
            return Result(json.dumps(issued, indent=2))
        lines = [f"client certificate for {issued['name']}, serial {issued['serial']}, valid until "
                 f"{human_time(issued['notAfter'])} UTC. Save the two blocks below as {issued['name']}.pem and "
                 f"{issued['name']}.key (mode 0600) on the client; the key is shown only now and kept nowhere:",
                 issued["certificatePem"].rstrip(), issued["keyPem"].rstrip(),
                 f"and in the client's config: auth.method = \"certificate\", transport.tls.certFile = "
                 f"\"{issued['name']}.pem\", transport.tls.keyFile = \"{issued['name']}.key\""]
        if not issued["required"]:
            lines.append("note: this server does not ask for client certificates yet (transport.tls.trustedCaFile)")
        return Result("\n".join(lines))

    async def _cert_revoke(self, positional: List[str], options: Dict[str, Any]) -> Result:
        revoked = await self.management.revoke_certificate(positional[0], self.operator)
        if options.get("--json"):
            return Result(json.dumps(revoked, indent=2))
        return Result("\n".join(f"client certificate {r['serial']}" + (f" of {r['name']}" if r["name"] else "")
                                + " revoked; its client is cut off within seconds" for r in revoked))
    async def _token_limit(self, positional: List[str], options: Dict[str, Any]) -> Result:
        record = await self.management.set_token_bandwidth(positional[0], positional[1])
        if options.get("--json"):
            return Result(as_json(record))
        if not record.max_bandwidth:
            return Result(f"client {record.name} has no bandwidth limit of its own now (maxBandwidthPerClient applies)")
        return Result(f"client {record.name} is limited to {format_rate(record.max_bandwidth)} each way, "
                      "at once on its open connections")

    async def _limits(self, positional: List[str], options: Dict[str, Any]) -> Result:
        limits = self.management.limits()
        if options.get("--json"):
            return Result(json.dumps(limits, indent=2))
        return Result(limits_text(limits, self.width))

    async def _limits_set(self, positional: List[str], options: Dict[str, Any]) -> Result:
        key, value = positional
        limits = await self.management.set_limit(key, value, self.operator)
        if options.get("--json"):
            return Result(json.dumps(limits, indent=2))
        rate = limits[key]
        return Result(f"{key} is {format_rate(rate) + ' each way' if rate else 'no limit'} now, on every server on "
                      f"this store and on open connections (server.toml's waits until 'limits clear {key}')")

    async def _limits_clear(self, positional: List[str], options: Dict[str, Any]) -> Result:
        (key,) = positional
        limits = await self.management.clear_limit(key, self.operator)
        if options.get("--json"):
            return Result(json.dumps(limits, indent=2))
        rate = limits[key]
        return Result(f"{key} is server.toml's again: {format_rate(rate) + ' each way' if rate else 'no limit'}")

    async def _notify(self, positional: List[str], options: Dict[str, Any]) -> Result:
        views = await self.management.webhooks()
        if options.get("--json"):
            return Result(as_json(views))
        return Result(webhooks_table(views, self.width))

    async def _notify_add(self, positional: List[str], options: Dict[str, Any]) -> Result:
        events = [e.strip() for e in options.get("--events", "*").split(",")]
        view = await self.management.add_webhook(
            positional[0], positional[1], events=events, format=options.get("--format", "json"),
            secret=options.get("--secret"),
        )
        if options.get("--json"):
            return Result(as_json(view))
        return Result(webhooks_table([view], self.width))

    async def _notify_remove(self, positional: List[str], options: Dict[str, Any]) -> Result:
        await self.management.remove_webhook(positional[0])
        return Result(f"webhook {positional[0]} removed")

    async def _notify_test(self, positional: List[str], options: Dict[str, Any]) -> Result:
        await self.management.test_webhook(positional[0])
        return Result(f"test notification queued for webhook {positional[0]}")


    async def _mail(self, positional: List[str], options: Dict[str, Any]) -> Result:
        views = await self.management.mail_recipients()
        if options.get("--json"):
            return Result(as_json(views))
        return Result(mail_table(views, self.width))

    async def _mail_add(self, positional: List[str], options: Dict[str, Any]) -> Result:
        events = [e.strip() for e in options.get("--events", "*").split(",")]
        view = await self.management.add_mail_recipient(positional[0], events=events)
        if options.get("--json"):
            return Result(as_json(view))
        return Result(mail_table([view], self.width))

    async def _mail_remove(self, positional: List[str], options: Dict[str, Any]) -> Result:
        await self.management.remove_mail_recipient(positional[0])
        return Result(f"{positional[0]} no longer gets notification e-mail")

    async def _mail_test(self, positional: List[str], options: Dict[str, Any]) -> Result:
        await self.management.test_mail(positional[0])
        return Result(f"test e-mail queued for {positional[0]}")

    async def _events(self, positional: List[str], options: Dict[str, Any]) -> Result:
        limit = _int(options["--limit"], "--limit", "events") if "--limit" in options else 20
        if not 1 <= limit <= MAX_EVENTS:
            raise UsageError(f"events: --limit must be from 1 to {MAX_EVENTS}", "events")
        records = await self.management.events(type_=options.get("--type"), client=options.get("--client"),
                                               limit=limit)
        if options.get("--json"):
            return Result(as_json(records))
        return Result(events_table(records, self.width))

    async def _reload(self, positional: List[str], options: Dict[str, Any]) -> Result:
        report = await self.management.reload(self.operator)
        if options.get("--json"):
            return Result(json.dumps(report.to_json(), indent=2))
        return Result("\n".join(report.lines()))

    async def _access(self, positional: List[str], options: Dict[str, Any]) -> Result:
        rules = self.management.access_rules()
        if options.get("--json"):
            return Result(json.dumps(rules, indent=2))
        return Result(access_text(rules))

    async def _bans(self, positional: List[str], options: Dict[str, Any]) -> Result:
        bans = self.management.bans()
        if options.get("--json"):
            return Result(json.dumps(bans, indent=2))
        return Result(bans_table(bans, self.width))

    async def _ban(self, positional: List[str], options: Dict[str, Any]) -> Result:
        seconds = _int(options["--for"], "--for", "ban") if "--for" in options else None
        ban = await self.management.ban(positional[0], seconds, options.get("--reason", ""), self.operator)
        if options.get("--json"):
            return Result(json.dumps(ban, indent=2))
        return Result(f"{ban['address']} banned on every listener for {ban['remaining']:.0f} s")

    async def _unban(self, positional: List[str], options: Dict[str, Any]) -> Result:
        await self.management.lift_ban(positional[0], self.operator)
        return Result(f"ban of {positional[0]} lifted")

    async def _python(self, positional: List[str], options: Dict[str, Any]) -> Result:
        if not self.python_allowed:
            return Result("the Python console is off; set console.python = true in the server's config "
                          "and restart the server to allow it for the admin", EXIT_FAILED)
        return Result(action="python")
