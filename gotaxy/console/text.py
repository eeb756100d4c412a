# -*- test-case-name: tests.test_console_text,tests.test_console_commands -*-
"""
The console's text: records turned into lines that fit a terminal.

Tables are columns separated by two spaces and cut to C{WIDTH} (80) columns,
cut cells ending in C{~}; C{key  value} listings the same.  Every string that
came from outside (a client's version, an event's detail) passes through
L{printable} first, so it cannot drive the operator's terminal.  Sizes and rates are
L{gotaxy.units}' (1024s, KiB), the same text the panel shows.

Nothing here does I/O or knows about SSH: L{gotaxy.console.commands} calls
these to build its results, L{gotaxy.console.session} to draw C{watch}.
"""

from __future__ import annotations

import json
import textwrap
import time
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import attrs

from gotaxy.events import Event
from gotaxy.proxy import registry
from gotaxy.server.manage import ClientView, NodeView, TunnelView, status_text
from gotaxy.units import format_bytes, format_rate

__all__ = [
    "WIDTH",
    "as_json",
    "client_detail",
    "clients_table",
    "cut",
    "events_table",
    "human_duration",
    "human_time",
    "mail_table",
    "pairs",
    "printable",
    "render_watch",
    "status_pairs",
    "table",
    "tokens_table",
    "tunnel_detail",
    "tunnel_ref",
    "tunnels_table",
    "webhooks_table",
]

WIDTH = 80  #: every table fits this many columns


def human_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def human_time(at: Optional[float]) -> str:
    if at is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at))


_CONTROL = {c: "?" for c in list(range(0, 32)) + [127] + list(range(0x80, 0xA0))}


def printable(text: str) -> str:
    """``text`` without control characters, which could drive the operator's terminal."""
    return text.translate(_CONTROL)


def cut(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: max(0, width - 1)] + "~"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], width: int = WIDTH,
          minimum: int = 6) -> str:
    """
    Columns separated by two spaces, cut to ``width`` columns in all.

    When the natural widths do not fit, the widest column is narrowed one
    character at a time (never below ``minimum`` or its header) and its
    cells end in ``~`` where they were cut.
    """
    cells = [[printable("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    floor = [max(len(h), minimum) for h in headers]
    gap = 2 * (len(headers) - 1)
    while sum(widths) + gap > width:
        shrinkable = [i for i in range(len(widths)) if widths[i] > floor[i]]
        if not shrinkable:
            break
        widest = max(shrinkable, key=lambda i: widths[i])
        widths[widest] -= 1

    def line(values: Sequence[str]) -> str:
        return "  ".join(cut(v, w).ljust(w) for v, w in zip(values, widths)).rstrip()

    out = [line(list(headers))]
    out += [line(row) for row in cells]
    if not cells:
        out.append("(none)")
    return "\n".join(out)


def pairs(items: Sequence[Tuple[str, Any]], width: int = WIDTH) -> str:
    """A two-column ``key  value`` listing, values cut to ``width``."""
    key_width = max(len(k) for k, _ in items)
    return "\n".join(
        cut(f"{k.ljust(key_width)}  {printable('-' if v is None else str(v))}", width) for k, v in items
    )


def as_json(value: Any) -> str:
    def convert(v: Any) -> Any:
        if attrs.has(type(v)):
            return attrs.asdict(v, recurse=True, value_serializer=lambda _i, _a, x: list(x) if isinstance(x, tuple) else x)
        raise TypeError(f"cannot print {type(v).__name__} as JSON")

    return json.dumps(value, default=convert, indent=2)


def tunnel_ref(view: TunnelView) -> str:
    return f"{view.client}/{view.name}"


def address_text(view: TunnelView) -> str:
    """A tunnel's public address as every face shows it (``port 16000``), or ``auto`` while none is known."""
    return view.address.description if view.address is not None else "auto"


def type_label(view: TunnelView) -> str:
    """The tunnel type's label (``TCP``), from its proxy type."""
    proxy_type = registry.get(view.type)
    return proxy_type.label if proxy_type is not None else view.type


def tunnels_table(views: Sequence[TunnelView], width: int = WIDTH) -> str:
    return table(
        ["TUNNEL", "ADDRESS", "LOCAL", "STATUS", "CONNS", "IN/S", "OUT/S"],
        [
            [tunnel_ref(v), address_text(v), v.local_addr, status_text(v), v.connections,
             format_rate(v.rate_in), format_rate(v.rate_out)]
            for v in views
        ],
        width,
    )


def render_watch(status: Any, views: Sequence[TunnelView], recent: Sequence[Event], now: float,
                 width: int = WIDTH, height: int = 24) -> str:
    """One frame of ``watch``: totals, the tunnels table, the latest events."""
    head = (
        f"gotaxy {status.version}  up {human_duration(status.uptime)}  "
        f"clients {status.clients_online}/{status.clients_total}  "
        f"tunnels {status.tunnels_up}/{status.tunnels_total}"
    )
    nodes = list(getattr(status, "nodes", ()))
    if len(nodes) > 1:  # the counts and rates are of all nodes that are up
        head += f"  nodes {sum(1 for n in nodes if n.state == 'up')}/{len(nodes)}"
    traffic = (
        f"in {format_bytes(status.bytes_in)} ({format_rate(status.rate_in)})  "
        f"out {format_bytes(status.bytes_out)} ({format_rate(status.rate_out)})  "
        f"{human_time(now)} UTC"
    )
    lines = [cut(head, width), cut(traffic, width), ""]
    tunnel_lines = tunnels_table(views, width).split("\n")
    room = max(3, height - 4 - len(lines) - min(len(recent), 5) - 1)
    if len(tunnel_lines) > room:
        hidden = len(tunnel_lines) - room + 1
        tunnel_lines = tunnel_lines[: room - 1] + [f"... and {hidden} more"]
    lines += tunnel_lines
    if recent:
        lines.append("")
        for event in list(recent)[-5:]:
            what = " ".join(x for x in (event.client and (event.client + (f"/{event.tunnel}" if event.tunnel else "")),
                                        event.detail) if x)
            lines.append(cut(printable(f"{time.strftime('%H:%M:%S', time.gmtime(event.at))}  {event.type}  {what}"),
                              width))
    lines.append("")
    lines.append("press any key to stop")
    return "\n".join(lines)


def tunnel_detail(v: TunnelView, width: int = WIDTH) -> str:
    items = [
        ("tunnel", tunnel_ref(v)),
        ("status", status_text(v)),
        ("enabled", "yes" if v.enabled else "no"),
        ("defined by", "the server (console or panel)" if v.source == "server" else "the client's config"),
        ("type", type_label(v)),
        ("published at", v.address.description if v.address is not None else "an address the server picks when it opens"),
        ("local address", v.local_addr),
        ("connections", f"{v.connections} open, {v.opened} since up"),
        ("traffic", f"in {format_bytes(v.bytes_in)}, out {format_bytes(v.bytes_out)}"),
        ("rate", f"in {format_rate(v.rate_in)}, out {format_rate(v.rate_out)}"
                 + (f" (sampled on {v.node} at {human_time(v.traffic_at)[11:]} UTC)" if v.traffic_at else "")),
    ]
    if v.node is not None:
        items.insert(2, ("node", v.node))
    if v.datagrams is not None:
        items.append(("datagrams", datagrams_text(v.datagrams)))
    if v.http_refused is not None:
        items.append(("error pages", ", ".join(f"{count} {reason}" for reason, count in v.http_refused.items())
                      or "none"))
    return pairs(items, width)


def datagrams_text(counts: Dict[str, int]) -> str:
    """
    A udp tunnel's counters: ``in 150, out 148; dropped 2 too large, 0 queue
    full, 0 no slot; on the client 0 too large, 5 queue full, 0 no slot``.
    """
    text = (f"in {counts['datagrams_in']}, out {counts['datagrams_out']}; dropped {counts['too_large']} too large, "
            f"{counts['queue_full']} queue full, {counts['no_slot']} no slot")
    if counts.get("bandwidth"):
        text += f", {counts['bandwidth']} over the bandwidth limit"
    text += (f"; on the client {counts.get('client_too_large', 0)} too large, "
             f"{counts.get('client_queue_full', 0)} queue full, {counts.get('client_no_slot', 0)} no slot")
    if counts.get("client_bandwidth"):
        text += f", {counts['client_bandwidth']} over the bandwidth limit"
    return text


def client_detail(v: ClientView, width: int = WIDTH) -> str:
    return pairs([
        ("client", v.name),
        ("state", "online" if v.online else "offline"),
        ("node", v.node),
        ("address", v.address),
        ("version", v.version),
        ("connected at", human_time(v.connected_at) + " UTC" if v.connected_at else None),
        ("last seen", human_time(v.last_seen_at) + " UTC" if v.last_seen_at else None),
        ("round trip", f"{v.rtt * 1000:.1f} ms" if v.rtt is not None else None),
        ("tunnels", ", ".join(v.tunnels) or "none"),
    ], width)


def webhooks_table(views: Sequence[Any], width: int = WIDTH) -> str:
    return table(
        ["NAME", "URL", "EVENTS", "FORMAT", "SIGNED", "SOURCE"],
        [[v.name, v.url, ",".join(v.events), v.format, "yes" if v.signed else "no", v.source] for v in views],
        width,
    )


def mail_table(views: Sequence[Any], width: int = WIDTH) -> str:
    return table(
        ["ADDRESS", "EVENTS", "SOURCE"], [[v.address, ",".join(v.events), v.source] for v in views], width
    )


def status_pairs(s: Any, width: int = WIDTH) -> str:
    """
    The totals, as ``status`` prints them: with other nodes on the store,
    of all nodes that are up (the byte counts are this node's), then the
    nodes table.
    """
    nodes = list(getattr(s, "nodes", ()))
    if len(nodes) <= 1:
        return pairs([
            ("version", s.version),
            ("uptime", human_duration(s.uptime)),
            ("clients", f"{s.clients_online} online, {s.clients_total} known"),
            ("tunnels", f"{s.tunnels_up} up, {s.tunnels_total} defined"),
            ("traffic in", f"{format_bytes(s.bytes_in)} ({format_rate(s.rate_in)} now)"),
            ("traffic out", f"{format_bytes(s.bytes_out)} ({format_rate(s.rate_out)} now)"),
        ], width)
    up = sum(1 for n in nodes if n.state == "up")
    here = next((n.node for n in nodes if n.here), "?")
    text = pairs([
        ("version", s.version),
        ("uptime", f"{human_duration(s.uptime)} (node {here})"),
        ("nodes", f"{up} up, {len(nodes)} known"),
        ("clients", f"{s.clients_online} online on all nodes, {s.clients_total} known"),
        ("tunnels", f"{s.tunnels_up} up on all nodes, {s.tunnels_total} defined"),
        ("traffic in", f"{format_rate(s.rate_in)} now on all nodes; {format_bytes(s.bytes_in)} through node {here}"),
        ("traffic out", f"{format_rate(s.rate_out)} now on all nodes; {format_bytes(s.bytes_out)} through node {here}"),
    ], width)
    return text + "\n\n" + nodes_table(nodes, width)


def clients_table(views: Sequence[ClientView], width: int = WIDTH) -> str:
    return table(
        ["CLIENT", "STATE", "NODE", "ADDRESS", "VERSION", "RTT", "TUNNELS", "LAST SEEN"],
        [[v.name, "online" if v.online else "offline", v.node, v.address, v.version,
          f"{v.rtt * 1000:.0f}ms" if v.rtt is not None else None, len(v.tunnels),
          human_time(v.last_seen_at)] for v in views],
        width,
    )


def nodes_table(views: Sequence[NodeView], width: int = WIDTH) -> str:
    """The server nodes sharing the store, as ``nodes`` prints them (this one marked ``*``)."""
    return table(
        ["NODE", "STATE", "CLIENTS", "TUNNELS", "IN/S", "OUT/S", "LEASE UNTIL"],
        [[("* " if v.here else "") + v.node, v.state, len(v.clients), v.tunnels_up, format_rate(v.rate_in),
          format_rate(v.rate_out), human_time(v.lease_until)] for v in views],
        width,
    )


def tokens_table(records: Sequence[Any], now: float, width: int = WIDTH) -> str:
    """Client tokens; ``now`` decides which have expired."""
    return table(
        ["NAME", "STATE", "CREATED", "EXPIRES", "LAST USED", "DOMAINS", "BANDWIDTH"],
        [[r.name, "active" if r.active(now) else ("revoked" if r.revoked_at else "expired"),
          human_time(r.created_at), human_time(r.expires_at), human_time(r.last_used_at),
          ", ".join(r.allow_domains) or "-",
          format_rate(r.max_bandwidth) if getattr(r, "max_bandwidth", 0) else "-"] for r in records],
        width,
    )


def limits_text(limits: dict, width: int = WIDTH) -> str:
    """The server's limits in force and each connected client's bandwidth (``Management.limits``)."""
    def rate(value: int) -> str:
        return format_rate(value) if value else "no limit"

    def count(value: int) -> str:
        return str(value) if value else "no limit"

    overrides = limits.get("live", {})

    def live(key: str) -> str:
        """The rate in force, and whether an operator set it live."""
        if key not in overrides:
            return rate(limits[key])
        return f"{rate(limits[key])} (live; server.toml: {rate(limits['file'][key])})"

    lines = [pairs([
        ("maxBandwidth", live("maxBandwidth")),
        ("maxBandwidthPerClient", live("maxBandwidthPerClient")),
        ("maxConnectionsPerClient", str(limits["maxConnectionsPerClient"])),
        ("tunnelMaxConnections", count(limits["tunnelMaxConnections"])),
        ("tunnelMaxConnectionsPerIP", count(limits["tunnelMaxConnectionsPerIP"])),
        ("tunnelConnectionRatePerIP", count(limits["tunnelConnectionRatePerIP"]) + " a minute"
         if limits["tunnelConnectionRatePerIP"] else "no limit"),
    ], width)]
    for key, override in overrides.items():
        lines += textwrap.wrap(f"{key} was set live by {override['by']} at {human_time(override['at'])} UTC; "
                               f"'limits clear {key}' gives server.toml's back", width, subsequent_indent="  ")
    if limits["clients"]:
        lines.append(table(["CLIENT", "BANDWIDTH", "FROM"],
                           [[c["name"], rate(c["maxBandwidth"]), "its token" if c["own"] else "maxBandwidthPerClient"]
                            for c in limits["clients"]], width))
    return "\n".join(lines)


def events_table(records: Sequence[Any], width: int = WIDTH) -> str:
    def what(r: Any) -> str:
        subject = "/".join(x for x in (r.client, r.tunnel) if x)
        return " ".join(x for x in (subject, r.address and f"from {r.address}", r.detail) if x)

    return table(
        ["TIME (UTC)", "TYPE", "DETAIL"],
        [[human_time(r.at), r.type, what(r)] for r in records],
        width,
    )


def bans_table(bans: Sequence[dict], width: int = WIDTH) -> str:
    """The bans in force (``Management.bans``)."""
    if not bans:
        return "no address is banned"
    return table(
        ["ADDRESS", "LEFT", "UNTIL (UTC)", "BAN", "BY", "WHY"],
        [[b["address"], human_duration(b["remaining"]), human_time(b["until"]), b["strikes"], b["by"], b["reason"]]
         for b in bans],
        width,
    )


def access_text(rules: dict) -> str:
    """The address rules and ban settings in force (``Management.access_rules``)."""
    def listed(entry: dict) -> str:
        parts = []
        if entry["allow"]:
            parts.append("allow " + ", ".join(entry["allow"]))
        if entry["deny"]:
            parts.append("deny " + ", ".join(entry["deny"]))
        return "; ".join(parts) or "anyone"

    lines = ["Address rules (access.*):"]
    for name, entry in rules["listeners"].items():
        lines.append(f"  {name + ':':<12} {listed(entry)}")
    for pattern, entry in rules["perTunnel"].items():
        lines.append(f"  tunnel {pattern}: {listed(entry)}")
    ban = rules["ban"]
    if ban["enable"]:
        thresholds = ", ".join(f"{kind} {count}" for kind, count in ban["thresholds"].items() if count)
        lines.append(f"Bans: after {thresholds} in {ban['window']:g} s; first for {human_duration(ban['time'])}, "
                     f"doubling up to {human_duration(ban['maxTime'])}; never {', '.join(ban['exempt']) or '-'}")
    else:
        lines.append("Bans: off (access.ban.enable = false)")
    if ban["nftSet"] or ban["nftSet6"]:
        lines.append(f"Firewall: nftables set {ban['nftSet'] or '-'} (IPv4), {ban['nftSet6'] or '-'} (IPv6)")
    refused = ", ".join(f"{r['listener']} {r['reason']} {r['count']}" for r in rules["refused"])
    lines.append(f"Refused so far: {refused or 'none'}")
    return "\n".join(lines)


def certificates_table(settings: dict, certificates: Sequence[dict], width: int = WIDTH) -> str:
    """The client certificates (``Management.certificates``), after whether the server asks for them."""
    if settings["required"]:
        how = "alone" if settings["method"] == "certificate" else "and a token"
        refused = ", ".join(f"{k} {v}" for k, v in settings["refusals"].items() if v) or "none"
        head = (f"Client certificates required ({how}), CA {settings['trustedCaFile']}; refused so far: {refused}")
    else:
        head = "Client certificates are not asked for (no transport.tls.trustedCaFile); tokens only"
    if not certificates:
        return head + "\nno client certificate issued or revoked yet ('cert issue NAME')"
    rows = []
    for c in certificates:
        state = c["status"] + (f" by {c['revokedBy']}" if c["revokedBy"] else "")
        rows.append([c["serial"], c["name"] or "(made elsewhere)", human_time(c["notAfter"]) if c["notAfter"] else "-",
                     state])
    return head + "\n" + table(["SERIAL", "NAME", "EXPIRES (UTC)", "STATE"], rows, width)
