# -*- test-case-name: tests.test_web_api -*-
"""
The OpenAPI 3.1 document of the panel's REST API, served at
``/api/v0.1/openapi.json``.

Schemas are plain JSON Schema (what OpenAPI 3.1 uses), so tests validate
real responses against them with ``jsonschema``; ``tests/test_web_api.py``
also checks that the routes here and the routes ``Panel`` serves are the
same set.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

from gotaxy import __version__
from gotaxy.events import FAMILIES, FIELDS, QUERY_TYPES, TYPES
from gotaxy.proxy import registry
from gotaxy.proxy.fields import KINDS
from gotaxy.store.overrides import KEYS as LIVE_KEYS

API_PREFIX = "/api/v0.1"

WEBHOOK_FORMATS = ("json", "slack", "dingtalk", "feishu")

_NUMBER_OR_NULL = {"type": ["number", "null"]}
#: A token's allowed domains (gotaxy.server.domains): names, or "*.example.com" for any name under it.
_ALLOW_DOMAINS = {"type": "array", "items": {"type": "string"}, "maxItems": 256,
                  "description": 'custom domains the client may claim: "shop.example.com", or "*.example.com" for any '
                                 "name under it; empty: those the server's allowDomains allow"}
_STRING_OR_NULL = {"type": ["string", "null"]}
#: A notification filter: an event type, a family ("tunnel.*" or "tunnel."), or "*".
_FILTER_PATTERN = {"enum": ["*", *TYPES, *(f"{f}.*" for f in FAMILIES), *(f"{f}." for f in FAMILIES)]}


def _object(properties: Dict[str, Any], required: Optional[List[str]] = None) -> Dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


def _ref(name: str) -> Dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _list_of(key: str, name: str) -> Dict[str, Any]:
    return _object({key: {"type": "array", "items": _ref(name)}})


SCHEMAS: Dict[str, Any] = {
    "Error": _object(
        {
            "error": {
                "type": "object",
                "properties": {
                    "kind": {
                        "type": "string",
                        "enum": ["invalid", "unauthorized", "forbidden", "not_found", "method", "conflict",
                                 "too_large", "media_type", "locked", "internal", "unavailable"],
                    },
                    "message": {"type": "string"},
                    "field": {**_STRING_OR_NULL, "description": "the request field the error is about"},
                    "retry_after": {"type": "number", "description": "seconds until the next log-in attempt"},
                    "totp_required": {"type": "boolean"},
                },
                "required": ["kind", "message", "field"],
                "additionalProperties": False,
            }
        }
    ),
    "Health": _object({"status": {"const": "ok"}, "version": {"type": "string"}}),
    "Login": _object(
        {"username": {"type": "string"}, "password": {"type": "string"},
         "code": {"type": "string", "description": "TOTP code, when the second factor is on"}},
        ["username", "password"],
    ),
    "Account": _object(
        {
            "username": {"type": "string"},
            "via": {"enum": ["session", "token"]},
            "csrf_token": {**_STRING_OR_NULL, "description": "send as X-CSRF-Token with state-changing requests"},
            "expires_at": _NUMBER_OR_NULL,
            "totp_enabled": {"type": "boolean"},
        }
    ),
    "PasswordChange": _object({"old_password": {"type": "string"}, "new_password": {"type": "string", "minLength": 10}}),
    "TotpSetup": _object(
        {"secret": {"type": "string"}, "uri": {"type": "string"},
         "qr_svg": {"type": "string", "description": "data: URL of an SVG QR code of the URI"}}
    ),
    "TotpCode": _object({"code": {"type": "string", "pattern": "^[0-9 ]{6,8}$"}}),
    "ApiToken": _object({"name": {"type": "string"}, "created_at": {"type": "number"}, "last_used_at": _NUMBER_OR_NULL}),
    "ApiTokenCreate": _object({"name": {"type": "string"}}),
    "NewApiToken": _object({"api_token": _ref("ApiToken"), "token": {"type": "string", "description": "shown once"}}),
    "Status": _object(
        {
            "version": {"type": "string"},
            "uptime": {"type": "number"},
            "clients_online": {"type": "integer"},
            "clients_total": {"type": "integer"},
            "tunnels_up": {"type": "integer"},
            "tunnels_total": {"type": "integer"},
            "bytes_in": {"type": "integer", "description": "this node's, since it started"},
            "bytes_out": {"type": "integer", "description": "this node's, since it started"},
            "rate_in": {"type": "number", "description": "bytes per second, all nodes whose lease runs"},
            "rate_out": {"type": "number", "description": "bytes per second, all nodes whose lease runs"},
            "nodes": {"type": "array", "items": _ref("Node"),
                      "description": "the breakdown by node (clients_online, tunnels_up and the rates are the "
                                     "sums over the nodes that are up)"},
        }
    ),
    "Client": _object(
        {
            "name": {"type": "string"},
            "online": {"type": "boolean"},
            "address": _STRING_OR_NULL,
            "version": _STRING_OR_NULL,
            "connected_at": _NUMBER_OR_NULL,
            "last_seen_at": _NUMBER_OR_NULL,
            "rtt": {**_NUMBER_OR_NULL, "description": "last heartbeat round trip, seconds"},
            "tunnels": {"type": "array", "items": {"type": "string"}},
            "node": {**_STRING_OR_NULL, "description": "the server node holding it while online"},
        }
    ),
    "Node": _object(
        {
            "node": {"type": "string", "description": "its id (DATA_DIR/node-id)"},
            "state": {"enum": ["up", "down", "gone"],
                      "description": "up: its lease runs; down: it stopped renewing it and its rows are not "
                                     "released yet; gone: rows name it but it has no lease"},
            "here": {"type": "boolean", "description": "the node that answered this request"},
            "host": {"type": "string"},
            "pid": {"type": "integer"},
            "started_at": _NUMBER_OR_NULL,
            "lease_until": _NUMBER_OR_NULL,
            "clients": {"type": "array", "items": {"type": "string"}, "description": "the clients online on it"},
            "tunnels_up": {"type": "integer"},
            "rate_in": {"type": "number", "description": "bytes per second"},
            "rate_out": {"type": "number", "description": "bytes per second"},
            "traffic_at": {**_NUMBER_OR_NULL, "description": "null: measured now (this node); else the time of "
                           "its newest history sample, or null if it has none yet"},
        }
    ),
    "Tunnel": _object(
        {
            "client": {"type": "string"},
            "name": {"type": "string"},
            "type": {"type": "string"},
            "local_addr": {"type": "string"},
            "address": {"oneOf": [_ref("PublicAddress"), {"type": "null"}],
                        "description": "where the public reaches it (kept while it is down); null: not known yet"},
            "spec": {"oneOf": [_ref("TunnelSpec"), {"type": "null"}]},
            "status": {"type": "string", "description": "up, down, disabled, or refused (an error; see reason); "
                       "down while the port is open: the local service does not answer the client"},
            "reason": _STRING_OR_NULL,
            "retry_in": {**_NUMBER_OR_NULL, "description": "refused: seconds until the client asks again, "
                         "if it said (0: any moment)"},
            "source": {"enum": ["client", "server"], "description": "client: from the client's own config"},
            "enabled": {"type": "boolean"},
            "connections": {"type": "integer"},
            "opened": {"type": "integer"},
            "bytes_in": {"type": "integer"},
            "bytes_out": {"type": "integer"},
            "rate_in": {"type": "number"},
            "rate_out": {"type": "number"},
            "datagrams": {"oneOf": [_ref("DatagramCounts"), {"type": "null"}],
                          "description": "udp tunnels: datagrams and drops since the server started; null otherwise"},
            "http_refused": {"oneOf": [{"type": "object", "additionalProperties": {"type": "integer"}}, {"type": "null"}],
                             "description": "http tunnels: requests answered with an error page since the server "
                                            "started, by reason (busy, timeout, bad_gateway, unauthorized, "
                                            "locked_out, denied); null otherwise"},
            "node": {**_STRING_OR_NULL, "description": "the server node holding it while it is up"},
            "traffic_at": {**_NUMBER_OR_NULL, "description": "null: its rates are live (it is up on this node, "
                           "or not up); else held by another node, the time of that node's newest history "
                           "sample of it, which the rates are"},
        }
    ),
    "DatagramCounts": _object(
        {
            "datagrams_in": {"type": "integer", "description": "from visitors, sent to the client"},
            "datagrams_out": {"type": "integer", "description": "from the client, sent to visitors"},
            "too_large": {"type": "integer", "description": "dropped: larger than udpPacketSize (either way)"},
            "queue_full": {"type": "integer", "description": "dropped: the client's connection or the public "
                                                             "socket was backed up"},
            "no_slot": {"type": "integer", "description": "dropped: no association could be opened for a new visitor"},
            "bandwidth": {"type": "integer", "description": "dropped: over the tunnel's transport.bandwidthLimit "
                                                            "(bandwidthLimitMode \"server\")"},
            "client_bandwidth": {"type": "integer", "description": "dropped on the client: over the tunnel's "
                                                                   "transport.bandwidthLimit (bandwidthLimitMode "
                                                                   "\"client\")"},
            "client_too_large": {"type": "integer", "description": "dropped on the client (as it reports every "
                                                                   "10 s): a reply larger than udpPacketSize"},
            "client_queue_full": {"type": "integer", "description": "dropped on the client: its connection to the "
                                                                    "server or the local socket was backed up"},
            "client_no_slot": {"type": "integer", "description": "dropped on the client: no socket could be opened "
                                                                 "for a new visitor"},
        }
    ),
    "PublicAddress": _object(
        {
            "scheme": {"type": "string", "description": "tcp, udp, http or https: the namespace of the address"},
            "port": {"type": "integer", "minimum": 0, "maximum": 65535,
                     "description": "the public port (for host names, the shared port, 0: the default one)"},
            "hosts": {"type": "array", "items": {"type": "string"}, "description": "host names (http, https)"},
            "paths": {"type": "array", "items": {"type": "string"},
                      "description": "URL path prefixes on those names (frp's locations); empty: every path"},
            "user": {"type": "string", "description": "only requests of this basic-auth user (routeByHTTPUser); empty: anyone's"},
            "description": {"type": "string", "description": "how to show it: 'port 16000', 'http://wiki.example.com'"},
        }
    ),
    # "TunnelSpec" is built from the registered proxy types (tunnel_spec_schema).
    "TunnelChanges": {
        "type": "object",
        "description": "some of a tunnel's settings in frp's keys (a key set to null goes back to its default; "
                       "another 'type' replaces them all)",
        "properties": {"type": {"type": "string"}},
        "additionalProperties": True,
    },
    "ProxyField": _object(
        {
            "key": {"type": "string", "description": "frp's key, as in the spec"},
            "kind": {"enum": list(KINDS), "description": "what a value looks like (gotaxy.proxy.fields)"},
            "label": {"type": "string", "description": "the label's key in the panel's strings (www/i18n)"},
            "hint": {"type": "string", "description": "the placeholder's key in the panel's strings, or ''"},
            "help": {"type": "string"},
            "required": {"type": "boolean"},
            "default": {"description": "the value when the key is absent, or null"},
            "minimum": {"type": ["integer", "null"]},
            "maximum": {"type": ["integer", "null"]},
            "choices": {"type": "array", "items": {"type": "string"}},
            "editable": {"type": "boolean"},
        }
    ),
    "ProxyType": _object(
        {"name": {"type": "string"}, "label": {"type": "string"},
         "fields": {"type": "array", "items": _ref("ProxyField")}}
    ),
    "ProxyTypes": _list_of("types", "ProxyType"),
    "TunnelCreate": _object(
        {
            "client": {"type": "string"},
            "name": {"type": "string"},
            "local_addr": {"type": "string", "description": "tcp: host:port on the client's side"},
            "remote_port": {"type": "integer", "minimum": 0, "maximum": 65535, "description": "tcp: 0, the server picks"},
            "spec": {**_ref("TunnelSpec"), "description": "any type, instead of local_addr and remote_port"},
        },
        ["client", "name"],
    ),
    "TunnelEdit": _object(
        {"local_addr": {"type": "string"}, "remote_port": {"type": "integer", "minimum": 0, "maximum": 65535},
         "spec": {**_ref("TunnelChanges"), "description": "the keys to change (frp's names)"}}, []
    ),
    "Token": _object(
        {
            "name": {"type": "string"},
            "created_at": {"type": "number"},
            "expires_at": _NUMBER_OR_NULL,
            "revoked_at": _NUMBER_OR_NULL,
            "last_used_at": _NUMBER_OR_NULL,
            "allow_domains": _ALLOW_DOMAINS,
            "active": {"type": "boolean"},
            "max_bandwidth": {"type": "integer", "minimum": 0,
                              "description": "its client's own bandwidth limit, bytes a second each way, instead of "
                              "maxBandwidthPerClient; 0: none of its own"},
        }
    ),
    "TokenCreate": _object({"name": {"type": "string"}, "expires_at": _NUMBER_OR_NULL,
                            "allow_domains": _ALLOW_DOMAINS}, ["name"]),
    "TokenChange": _object({
        "allow_domains": _ALLOW_DOMAINS,
        "max_bandwidth": {"type": ["integer", "string", "null"],
                          "description": "bytes a second each way, or \"10MB\", \"512KB\" (KB = 1024); 0 or null: "
                          "none of its own. Applied at once to the client's open connections on every server"},
    }, []),
    "LimitsChange": _object({
        key: {"type": ["integer", "string", "null"],
              "description": f"{meaning}: a number of bytes or \"100MB\", \"512KB\" (KB = 1024), 0 for no limit; "
              "the live value, on every server of this store, kept across restarts and over server.toml (also "
              "after a reload); null drops the live value, so that server.toml's applies again"}
        for key, meaning in LIVE_KEYS.items()
    }, []),
    "LiveLimit": _object({"value": {"type": "integer"}, "by": {"type": "string", "description": "who set it"},
                          "at": {"type": "number"}}),
    "Limits": _object({
        "maxBandwidth": {"type": "integer", "description": "bytes a second each way for all clients (0: none), "
                         "in force: the live value if there is one, else server.toml's"},
        "maxBandwidthPerClient": {"type": "integer", "description": "each client's, unless its token has its own "
                                  "(in force, as maxBandwidth)"},
        "live": {"type": "object", "description": "the settings an operator set live (PATCH /limits), which win "
                 "over server.toml's until cleared", "properties": {key: _ref("LiveLimit") for key in LIVE_KEYS},
                 "additionalProperties": False},
        "file": _object({key: {"type": "integer"} for key in LIVE_KEYS}),
        "maxConnectionsPerClient": {"type": "integer"},
        "tunnelMaxConnections": {"type": "integer", "description": "default of transport.maxConnections (0: none)"},
        "tunnelMaxConnectionsPerIP": {"type": "integer"},
        "tunnelConnectionRatePerIP": {"type": "integer"},
        "clients": {"type": "array", "description": "connected clients and the bandwidth limit they are held to",
                    "items": _object({"name": {"type": "string"}, "maxBandwidth": {"type": "integer"},
                                      "own": {"type": "boolean", "description": "its token's own limit"}})},
    }),
    "NewToken": _object({
        "token": _ref("Token"),
        "secret": {"type": "string", "description": "shown once: a join token, gtx1.PIN.SECRET, that also pins this server"},
    }),
    "Event": _object(
        {
            "id": {"type": "integer"},
            "at": {"type": "number"},
            "type": {"enum": list(TYPES), "description": "see GET /events/types"},
            "client": _STRING_OR_NULL,
            "tunnel": _STRING_OR_NULL,
            "address": _STRING_OR_NULL,
            "detail": _STRING_OR_NULL,
            "count": {
                "type": "integer",
                "minimum": 1,
                "description": "occurrences this event stands for: failed log-ins from one address are one event a minute",
            },
            "node": {**_STRING_OR_NULL, "description": "the server process that recorded it; null: the gotaxy command"},
        }
    ),
    "EventType": _object(
        {
            "type": {"enum": list(TYPES)},
            "family": {"type": "string", "description": "what a filter such as 'tunnel.*' matches"},
            "meaning": {"type": "string"},
            "fields": {"type": "array", "items": {"enum": list(FIELDS)}, "description": "the Event fields it fills"},
            "recorded": {"type": "boolean", "description": "kept in the event log (notify.test is only sent)"},
        }
    ),
    "EventTypes": _list_of("types", "EventType"),
    "EventPage": _object(
        {
            "events": {"type": "array", "items": _ref("Event")},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "has_more": {"type": "boolean"},
        }
    ),
    "Webhook": _object(
        {
            "name": {"type": "string"},
            "url": {"type": "string",
                    "description": "redacted: scheme, host and port only (the path may hold a token)"},
            "events": {"type": "array", "items": _FILTER_PATTERN,
                       "description": "event types or patterns such as 'tunnel.*'; '*' for all"},
            "format": {"enum": list(WEBHOOK_FORMATS)},
            "signed": {"type": "boolean", "description": "it has a secret (which is never returned)"},
            "source": {
                "enum": ["config", "operator"],
                "description": "config: from server.toml, change it there; operator: added in the panel or console",
            },
        }
    ),
    "WebhookCreate": _object(
        {
            "name": {"type": "string", "maxLength": 64},
            "url": {"type": "string", "description": "http:// or https://", "maxLength": 2048},
            "events": {"type": "array", "items": _FILTER_PATTERN, "minItems": 1, "default": ["*"]},
            "format": {"enum": list(WEBHOOK_FORMATS), "default": "json"},
            "secret": {"type": "string", "description": "signs every delivery; never shown again"},
        },
        ["name", "url"],
    ),
    "Webhooks": _list_of("webhooks", "Webhook"),
    "MailRecipient": _object(
        {
            "address": {"type": "string", "description": "an e-mail address"},
            "events": {"type": "array", "items": _FILTER_PATTERN,
                       "description": "event types or patterns such as 'tunnel.*'; '*' for all"},
            "source": {
                "enum": ["config", "operator"],
                "description": "config: 'to' of [smtp] in server.toml, change it there; operator: added in the panel",
            },
        }
    ),
    "MailRecipientCreate": _object(
        {
            "address": {"type": "string", "maxLength": 320},
            "events": {"type": "array", "items": _FILTER_PATTERN, "minItems": 1, "default": ["*"]},
        },
        ["address"],
    ),
    "MailRecipients": _list_of("recipients", "MailRecipient"),
    "Ban": _object({
        "address": {"type": "string", "description": "the banned IPv4 address, or IPv6 network (its /64 by default, "
                    "access.ban.ipv6Prefix)"},
        "reason": {"type": "string", "description": "why: the failures that led to it, or the operator's reason"},
        "strikes": {"type": "integer", "description": "how many times it was banned (each repeat lasts twice as long)"},
        "at": {"type": "number", "description": "UNIX time of the ban"},
        "until": {"type": "number", "description": "UNIX time it ends"},
        "by": {"type": "string", "description": "'automatic', or the operator or API token"},
        "remaining": {"type": "number", "description": "seconds left"},
    }),
    "Bans": _list_of("bans", "Ban"),
    "BanCreate": _object({
        "address": {"type": "string", "maxLength": 64, "description": "an IPv4 or IPv6 address"},
        "seconds": {"type": "number", "description": "how long (default access.ban.time)"},
        "reason": {"type": "string", "maxLength": 200},
    }, required=["address"]),
    "AddressRules": _object({
        "allow": {"type": "array", "items": {"type": "string"}, "description": "CIDR networks; empty: anyone"},
        "deny": {"type": "array", "items": {"type": "string"}, "description": "CIDR networks; deny wins"},
    }),
    "Access": _object({
        "listeners": _object({name: _ref("AddressRules") for name in ("control", "webServer", "console", "tunnels")}),
        "perTunnel": {"type": "object", "additionalProperties": _ref("AddressRules"),
                      "description": "CLIENT/TUNNEL (or CLIENT/*) -> that tunnel's own rules"},
        "ban": {"type": "object", "description": "access.ban.* in force: enable, window, time, maxTime, "
                "forgetAfter, exempt, thresholds (per kind of failure), nftSet, nftSet6"},
        "refused": {"type": "array", "description": "connections refused since the start, per listener and reason "
                    "(denied, banned)",
                    "items": _object({"listener": {"type": "string"}, "reason": {"enum": ["denied", "banned"]},
                                      "count": {"type": "integer"}})},
    }),
    "Reload": _object({
        "applied": {"type": "array", "description": "settings applied live, with what was done",
                    "items": _object({"key": {"type": "string"}, "detail": {"type": "string"}})},
        "restart": {"type": "array", "description": "settings that changed but need a restart, with why",
                    "items": _object({"key": {"type": "string"}, "reason": {"type": "string"}})},
        "warnings": {"type": "array", "items": {"type": "string"}},
    }),
    "Clients": _list_of("clients", "Client"),
    "Nodes": _list_of("nodes", "Node"),
    "ThroughputPoint": _object(
        {
            "at": {"type": "number", "description": "UNIX time the sample was taken"},
            "seconds": {"type": "number", "description": "the time it covers, up to 'at'"},
            "bytes_in": {"type": "integer", "description": "received by all tunnels during those seconds"},
            "bytes_out": {"type": "integer", "description": "sent by all tunnels during those seconds"},
            "rate_in": {"type": "number", "description": "average bytes per second over those seconds"},
            "rate_out": {"type": "number", "description": "average bytes per second over those seconds"},
        }
    ),
    "Throughput": _object(
        {
            "window": {"type": "number", "description": "seconds back from 'until' that the points cover"},
            "until": {"type": "number", "description": "UNIX time of the answer"},
            "interval": {"type": "number", "description": "seconds between samples (history.sampleInterval)"},
            "points": {"type": "array", "items": _ref("ThroughputPoint"), "maxItems": 720,
                       "description": "oldest first; longer series are merged into at most 720 points"},
        }
    ),
    "DisconnectReason": _object(
        {"reason": _STRING_OR_NULL, "count": {"type": "integer"}, "last": {"type": "number"}}
    ),
    "StabilitySummary": _object(
        {
            "client": {"type": "string"},
            "online": {"type": "boolean"},
            "online_since": _NUMBER_OR_NULL,
            "first_seen": {**_NUMBER_OR_NULL, "description": "start of its first recorded session"},
            "online_seconds": {"type": "number", "description": "total time online in the recorded sessions"},
            "uptime_24h": {**_NUMBER_OR_NULL,
                           "description": "percent of the last 24 h (since first seen, if later) it was online"},
            "uptime_7d": {**_NUMBER_OR_NULL, "description": "the same over the last 7 days"},
            "connects_24h": {"type": "integer"},
            "connects_7d": {"type": "integer"},
            "disconnects_24h": {"type": "integer"},
            "disconnects_7d": {"type": "integer"},
            "disconnect_reasons_7d": {"type": "array", "items": _ref("DisconnectReason")},
            "sample_interval": {"type": "number"},
        }
    ),
    "Stabilities": _list_of("clients", "StabilitySummary"),
    "Session": _object(
        {"started": {"type": "number"}, "ended": {"type": "number", "description": "now while it is open"},
         "reason": {**_STRING_OR_NULL, "description": "why it ended"}, "open": {"type": "boolean"}}
    ),

    "Tunnels": _list_of("tunnels", "Tunnel"),
    "Tokens": _list_of("tokens", "Token"),
    "ClientCertificate": _object(
        SCHEMAS_CLIENT_CERTIFICATE := {
            "serial": {"type": "string", "description": "upper-case hex, as 'openssl x509 -serial' prints it"},
            "name": {"type": "string", "description": "the certificate's CN, its client's name; empty for a serial "
                                                      "made elsewhere and revoked here"},
            "fingerprint": {"type": "string"},
            "issuedAt": _NUMBER_OR_NULL,
            "notAfter": _NUMBER_OR_NULL,
            "issuedBy": {"type": "string"},
            "revokedAt": _NUMBER_OR_NULL,
            "revokedBy": _STRING_OR_NULL,
            "status": {"enum": ["valid", "expired", "revoked"]},
        }
    ),
    "ClientCertificateSettings": _object(
        {
            "required": {"type": "boolean", "description": "transport.tls.trustedCaFile is set: every client must "
                                                           "present a certificate"},
            "method": {"enum": ["token", "certificate"], "description": "auth.method: a token as well, or not"},
            "trustedCaFile": _STRING_OR_NULL,
            "refusals": {"type": "object", "additionalProperties": {"type": "integer"},
                         "description": "log-ins refused for their certificate, by reason"},
        }
    ),
    "ClientCertificates": _object({
        "settings": _ref("ClientCertificateSettings"),
        "certificates": {"type": "array", "items": _ref("ClientCertificate")},
    }),
    "ClientCertificateCreate": _object(
        {"name": {"type": "string"}, "days": {"type": "integer", "minimum": 1, "maximum": 7300, "default": 365}},
        ["name"],
    ),
    "NewClientCertificate": _object({"certificate": {
        "type": "object",
        "properties": {
            **SCHEMAS_CLIENT_CERTIFICATE,
            "certificatePem": {"type": "string"},
            "keyPem": {"type": "string", "description": "the private key, in this answer only: kept nowhere on the "
                                                        "server"},
            "required": {"type": "boolean", "description": "whether this server asks for client certificates yet"},
        },
        "required": [*SCHEMAS_CLIENT_CERTIFICATE, "certificatePem", "keyPem", "required"],
        "additionalProperties": False,
    }}),
    "RevokedClientCertificates": _list_of("revoked", "ClientCertificate"),
    "ApiTokens": _list_of("api_tokens", "ApiToken"),
}

SCHEMAS["Stability"] = _object(
    {
        **SCHEMAS["StabilitySummary"]["properties"],
        "rtt_samples_24h": {
            "type": "array", "maxItems": 720,
            "description": "heartbeat round trips of the last 24 h: [UNIX time, seconds or null]; when there are "
                           "more than 720, the highest of each run",
            "items": {"type": "array", "prefixItems": [{"type": "number"}, _NUMBER_OR_NULL], "minItems": 2,
                      "maxItems": 2},
        },
        "sessions_7d": {"type": "array", "items": _ref("Session"),
                        "description": "sessions that ended in the last 7 days, and the one open now; oldest first"},
    }
)


_ERRORS = {
    400: "invalid request (bad JSON, a missing or wrong field)",
    401: "not logged in, or a bad API token",
    403: "missing CSRF token, cross-site request, or an action API tokens cannot do",
    404: "no such client, tunnel, token, webhook or e-mail recipient",
    405: "method not allowed",
    409: ("conflict: port taken, name or address used, wrong kind of tunnel, a webhook or e-mail recipient from the "
          "config file, e-mail not set up"),
    413: "request body over 64 KiB",
    415: "request body not JSON",
    429: "too many failed log-ins, or too many log-ins in progress; see Retry-After",
    500: "a bug in the server (the traceback is in its log)",
    503: "unavailable: too many live views open, the server keeps no history, or its database is unreachable",
}

_PATH_PARAMS = {
    "client": "the client's name",
    "name": "the name of the client, tunnel, token or webhook",
    "address": "an e-mail address, percent-encoded ('@' as %40)",
    "what": "a client certificate's serial (hex), or its client's name",
}


def _operation(
    method: str,
    summary: str,
    response: Tuple[int, Optional[str]],
    request: Optional[str] = None,
    errors: Tuple[int, ...] = (),
    public: bool = False,
    query: Tuple[Tuple[str, Any, str], ...] = (),
    tag: str = "",
) -> Tuple[str, Dict[str, Any]]:
    status, schema = response
    responses: Dict[str, Any] = {}
    if schema is None:
        responses[str(status)] = {"description": "queued" if status == 202 else "done"}
    elif schema == "EventStream":
        responses[str(status)] = {
            "description": "server-sent events: one 'change' message per server event (data: an Event)",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    else:
        responses[str(status)] = {"description": "OK", "content": {"application/json": {"schema": _ref(schema)}}}
    codes = set(errors) | ({415, 413, 400} if request else set()) | (set() if public else {401, 405}) | {500}
    if method in ("post", "patch", "delete") and not public:
        codes.add(403)
    for code in sorted(codes):
        responses[str(code)] = {
            "description": _ERRORS[code], "content": {"application/json": {"schema": _ref("Error")}}
        }
    operation: Dict[str, Any] = {"summary": summary, "tags": [tag] if tag else [], "responses": responses}
    if public:
        operation["security"] = []
    if request:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(request)}}}
    if query:
        operation["parameters"] = [
            {"name": name, "in": "query", "required": False,
             "schema": type_ if isinstance(type_, dict) else {"type": type_}, "description": text}
            for name, type_, text in query
        ]
    return method, operation


_ROUTES: Dict[str, List[Tuple[str, Dict[str, Any]]]] = {
    "/health": [_operation("get", "Liveness; needs no log-in", (200, "Health"), public=True, tag="server")],
    "/login": [
        _operation("post", "Log in; sets the session cookie", (200, "Account"), "Login", (401, 403, 429), public=True,
                   tag="account")
    ],
    "/logout": [_operation("post", "Log out and end the session", (204, None), tag="account")],
    "/account": [_operation("get", "Who is logged in, and the CSRF token", (200, "Account"), tag="account")],
    "/account/password": [
        _operation("post", "Change the password (ends other sessions)", (204, None), "PasswordChange", (429,),
                   tag="account")
    ],
    "/account/totp": [
        _operation("post", "Start enrolling a TOTP second factor", (200, "TotpSetup"), errors=(409,), tag="account")
    ],
    "/account/totp/confirm": [
        _operation("post", "Turn the second factor on with a current code", (200, "Account"), "TotpCode", (409,),
                   tag="account")
    ],
    "/account/totp/disable": [
        _operation("post", "Turn the second factor off with a current code", (200, "Account"), "TotpCode", (409,),
                   tag="account")
    ],
    "/api-tokens": [
        _operation("get", "API tokens for scripts", (200, "ApiTokens"), tag="account"),
        _operation("post", "Create an API token (its text is shown once)", (201, "NewApiToken"), "ApiTokenCreate",
                   (409,), tag="account"),
    ],
    "/api-tokens/{name}": [_operation("delete", "Revoke an API token", (204, None), errors=(404,), tag="account")],
    "/openapi.json": [_operation("get", "This document", (200, None), tag="server")],
    "/status": [_operation("get", "Server overview and traffic", (200, "Status"), tag="server")],
    "/reload": [_operation("post", "Re-read the config file and apply what can change live; a wrong file "
                           "changes nothing (400 naming the key)", (200, "Reload"), errors=(400, 409), tag="server")],
    "/live": [_operation("get", "Live updates (server-sent events)", (200, "EventStream"), errors=(503,), tag="server")],
    "/nodes": [_operation("get", "Every server node on this database: its lease, clients online, tunnels up "
                          "and traffic", (200, "Nodes"), tag="server")],
    "/clients": [_operation("get", "All clients", (200, "Clients"), tag="clients")],
    "/clients/{name}": [_operation("get", "One client", (200, "Client"), errors=(404,), tag="clients")],
    "/clients/{name}/stability": [
        _operation("get", "A client's stability: uptime over 24 h and 7 days, connects, disconnects and why, its "
                   "sessions of the last 7 days and heartbeat round trips of the last 24 h", (200, "Stability"),
                   errors=(404, 503), tag="clients")
    ],
    "/stability": [
        _operation("get", "Every client's uptime over 24 h and 7 days, connects and disconnects", (200, "Stabilities"),
                   errors=(503,), tag="clients")
    ],
    "/throughput": [
        _operation("get", "The server's throughput from its recorded samples (history.sampleInterval apart)",
                   (200, "Throughput"), errors=(400, 503), tag="server",
                   query=(("window", "number", "seconds back from now, 60-86400, default 3600"),))
    ],
    "/clients/{name}/kick": [
        _operation("post", "Disconnect a client (it reconnects unless its token is revoked)", (204, None), errors=(404,),
                   tag="clients")
    ],
    "/proxy-types": [
        _operation("get", "The kinds of tunnel this server has, with each one's settings (for forms)",
                   (200, "ProxyTypes"), tag="tunnels")
    ],
    "/tunnels": [
        _operation("get", "All tunnels", (200, "Tunnels"), query=(("client", "string", "only this client's"),),
                   tag="tunnels"),
        _operation("post", "Create a tunnel for a known client; it opens at once if the client is online",
                   (201, "Tunnel"), "TunnelCreate", (404, 409), tag="tunnels"),
    ],
    "/tunnels/{client}/{name}": [
        _operation("get", "One tunnel", (200, "Tunnel"), errors=(404,), tag="tunnels"),
        _operation("patch", "Change a panel-made tunnel's local address or public port", (200, "Tunnel"), "TunnelEdit",
                   (404, 409), tag="tunnels"),
        _operation("delete", "Remove a panel-made tunnel", (204, None), errors=(404, 409), tag="tunnels"),
    ],
    "/tunnels/{client}/{name}/enable": [
        _operation("post", "Enable a tunnel", (200, "Tunnel"), errors=(404, 409), tag="tunnels")
    ],
    "/tunnels/{client}/{name}/disable": [
        _operation("post", "Disable a tunnel (closes its port)", (200, "Tunnel"), errors=(404,), tag="tunnels")
    ],
    "/tunnels/{client}/{name}/restart": [
        _operation("post", "Close and reopen a tunnel", (200, "Tunnel"), errors=(404, 409), tag="tunnels")
    ],
    "/tokens": [
        _operation("get", "Client tokens", (200, "Tokens"), tag="tokens"),
        _operation("post", "Create a client token (its text is shown once)", (201, "NewToken"), "TokenCreate", (409,),
                   tag="tokens"),
    ],
    "/tokens/{name}": [
        _operation("patch", "Change a client token: the custom domains its client may claim (empty: those the server "
                   "allows) and/or its client's own bandwidth limit, live", (200, "Token"), "TokenChange", (404,),
                   tag="tokens"),
        _operation("delete", "Revoke a client token; its client is cut off at once", (204, None), errors=(404,),
                   tag="tokens"),
    ],
    "/certificates": [
        _operation("get", "Client certificates issued from the server's CA and serials revoked (never a key), and "
                   "whether the server asks for one", (200, "ClientCertificates"), tag="certificates"),
        _operation("post", "Issue a client certificate from the server's CA; its private key is in this answer "
                   "only", (201, "NewClientCertificate"), "ClientCertificateCreate", tag="certificates"),
    ],
    "/certificates/{what}": [
        _operation("delete", "Revoke client certificates by serial or name; their clients are cut off within seconds "
                   "on every server of this store", (200, "RevokedClientCertificates"), errors=(404, 409),
                   tag="certificates")
    ],
    "/webhooks": [
        _operation("get", "Webhook notification targets", (200, "Webhooks"), errors=(409,), tag="notifications"),
        _operation("post", "Add a webhook (its secret is never returned)", (201, "Webhook"), "WebhookCreate", (409,),
                   tag="notifications"),
    ],
    "/webhooks/{name}": [
        _operation("delete", "Remove a webhook added in the panel or console", (204, None), errors=(404, 409),
                   tag="notifications")
    ],
    "/webhooks/{name}/test": [
        _operation("post", "Queue a test notification (notify.test) to this webhook only", (202, None),
                   errors=(404, 409), tag="notifications")
    ],
    "/mail-recipients": [
        _operation("get", "E-mail notification recipients (none when [smtp] is not set up)", (200, "MailRecipients"),
                   tag="notifications"),
        _operation("post", "Add an e-mail recipient (needs [smtp] in server.toml)", (201, "MailRecipient"),
                   "MailRecipientCreate", (409,), tag="notifications"),
    ],
    "/mail-recipients/{address}": [
        _operation("delete", "Remove an e-mail recipient added in the panel", (204, None), errors=(404, 409),
                   tag="notifications")
    ],
    "/mail-recipients/{address}/test": [
        _operation("post", "Queue a test e-mail (notify.test) to this recipient only", (202, None),
                   errors=(404, 409), tag="notifications")
    ],
    "/access": [_operation("get", "The address rules and ban settings in force (access.* in server.toml), and the "
                           "connections refused", (200, "Access"), tag="access")],
    "/limits": [
        _operation("get", "The server's bandwidth and connection limits in force (with the live ones and server.toml's), "
                   "and each connected client's bandwidth limit", (200, "Limits"), tag="access"),
        _operation("patch", "Set or clear maxBandwidth and/or maxBandwidthPerClient live, on every server of this "
                   "store; open connections follow at once (none is dropped); each change is a limits.changed event",
                   (200, "Limits"), "LimitsChange", (404,), tag="access"),
    ],
    "/bans": [
        _operation("get", "The addresses banned from every listener, longest-lasting first", (200, "Bans"),
                   tag="access"),
        _operation("post", "Ban an address from every listener of every server on this store", (201, "Ban"),
                   "BanCreate", tag="access"),
    ],
    "/bans/{address}": [
        _operation("delete", "Lift an address's ban (percent-encode an IPv6 address)", (204, None), errors=(404,),
                   tag="access")
    ],
    "/events/types": [
        _operation("get", "The event types: what each means and which fields it fills", (200, "EventTypes"),
                   tag="events")
    ],
    "/events": [
        _operation(
            "get", "Events, newest first", (200, "EventPage"), errors=(400,), tag="events",
            query=(
                ("type", {"enum": list(QUERY_TYPES)}, "an event type, or a family ending in '.' such as 'tunnel.'"),
                ("client", "string", "only this client's"),
                ("since", "number", "UNIX time, inclusive"),
                ("until", "number", "UNIX time, inclusive"),
                ("limit", "integer", "1-500, default 50"),
                ("offset", "integer", "events to skip"),
            ),
        )
    ],
}


def tunnel_spec_schema() -> Dict[str, Any]:
    """A spec of any registered proxy type, one schema per type from its fields (``gotaxy.proxy.fields``)."""
    variants = []
    for proxy_type in registry.types():
        properties: Dict[str, Any] = {"type": {"const": proxy_type.name}}
        properties.update({f.key: f.schema() for f in proxy_type.fields})
        required = [f.key for f in proxy_type.fields if f.required]
        if proxy_type.name != "tcp":  # a spec without a type is a tcp one
            required.insert(0, "type")
        variants.append({"title": proxy_type.name, "type": "object", "properties": properties,
                         "required": required, "additionalProperties": False})
    return {"description": "a tunnel's settings in frp's keys: 'type' (tcp when absent) and that type's keys "
                           "(GET /proxy-types lists them)", "oneOf": variants}


def openapi_document() -> Dict[str, Any]:
    paths: Dict[str, Any] = {}
    for path, operations in _ROUTES.items():
        item: Dict[str, Any] = {}
        names = [part[1:-1] for part in path.split("/") if part.startswith("{")]
        if names:
            item["parameters"] = [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}, "description": _PATH_PARAMS[n]}
                for n in names
            ]
        for method, operation in operations:
            item[method] = operation
        paths[API_PREFIX + path] = item
    return copy.deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "Gotaxy panel API",
                "version": __version__,
                "description": (
                    "Manage a Gotaxy tunnel server's clients, tunnels, tokens, webhooks and e-mail recipients. "
                    "Authenticate with the panel's session cookie (state-changing requests then need the "
                    "X-CSRF-Token header, whose value GET /account returns) or with 'Authorization: Bearer' and an "
                    "API token."
                ),
            },
            "components": {
                "schemas": {**SCHEMAS, "TunnelSpec": tunnel_spec_schema()},
                "securitySchemes": {
                    "session": {"type": "apiKey", "in": "cookie", "name": "gotaxy_session"},
                    "bearer": {"type": "http", "scheme": "bearer"},
                },
            },
            "security": [{"session": []}, {"bearer": []}],
            "paths": paths,
        }
    )
