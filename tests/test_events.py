"""
The one catalogue of event types (``gotaxy.events.TYPES``) and everything
that names event types: each must know every type, so that a type added
to the catalogue and missed by a consumer fails here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gotaxy.config import ConfigError, WebhookSpec
from gotaxy.console.commands import Commands
from gotaxy.events import FAMILIES, RECORDED, TYPES, Event, EventBus
from gotaxy.notify.filters import EventFilter
from gotaxy.notify.payload import describe, document
from gotaxy.web.openapi import openapi_document

DOCS = Path(__file__).resolve().parent.parent / "docs"


def full_event(name: str) -> Event:
    return Event(type=name, at=1_800_000_000.0, client="alice", tunnel="ssh", address="192.0.2.7:5000",
                 detail="the detail", count=3)


@pytest.mark.parametrize("name", list(TYPES))
def test_every_type_has_its_own_notification_text_naming_what_it_fills(name):
    kind = TYPES[name]
    text = describe(full_event(name), "edge-1")
    assert text.startswith("[edge-1] ") and name not in text  # the catalogue's phrase, not the generic fallback
    for field, shown in (("client", "alice"), ("tunnel", "ssh"), ("address", "192.0.2.7:5000")):
        if field in kind.phrase:
            assert field in kind.fields and shown in text
    assert document(full_event(name), "edge-1")["event"] == name


def test_an_unknown_type_from_a_newer_server_is_still_described():
    assert describe(Event(type="future.thing", at=0, client="bob"), "s") == "[s] future.thing client=bob"


@pytest.mark.parametrize("name", list(TYPES))
def test_notification_filters_accept_every_type_and_family(name):
    family = TYPES[name].family
    for pattern in (name, f"{family}.*", f"{family}.", "*"):
        if TYPES[name].recorded or pattern == name or pattern == "*":
            spec = WebhookSpec(url="http://127.0.0.1:1/hook", events=(pattern,))
            assert EventFilter(spec.events).matches(name), pattern


def test_a_filter_naming_no_type_is_refused():
    for pattern in ("tunnel.up", "tunnels.*", "notify.*"):
        with pytest.raises(ConfigError) as refused:
            WebhookSpec(url="http://127.0.0.1:1/hook", events=(pattern,))
        assert "'events'" in str(refused.value) and pattern in str(refused.value)


class _Management:
    core = None


def test_console_completes_every_recorded_type_and_family_after_type():
    commands = Commands(_Management())  # type: ignore[arg-type]
    offered = set(commands.complete("events --type "))
    assert set(RECORDED) <= offered
    assert {f"{family}." for family in FAMILIES} <= offered
    assert "notify.test" not in offered  # never in the event log


def test_the_openapi_document_enumerates_every_type():
    document = openapi_document()
    schemas = document["components"]["schemas"]
    assert schemas["Event"]["properties"]["type"]["enum"] == list(TYPES)
    assert schemas["EventType"]["properties"]["type"]["enum"] == list(TYPES)
    (events,) = [op for op in document["paths"]["/api/v0.1/events"].values()]
    (type_param,) = [p for p in events["parameters"] if p["name"] == "type"]
    assert set(type_param["schema"]["enum"]) == set(RECORDED) | {f"{f}." for f in FAMILIES}
    webhook_events = schemas["Webhook"]["properties"]["events"]["items"]["enum"]
    assert set(TYPES) | {f"{f}.*" for f in FAMILIES} | {"*"} <= set(webhook_events)


def test_the_panel_takes_its_event_families_from_the_catalogue():
    www = Path(__file__).resolve().parent.parent / "gotaxy" / "web" / "www"
    html = (www / "index.html").read_text()
    select = re.search(r'<select name="type">(.*?)</select>', html, re.S).group(1)
    assert re.findall(r'<option value="([^"]*)"', select) == [""]  # "All"; the rest come from GET /events/types
    assert '"/events/types"' in (www / "app.js").read_text()


@pytest.mark.parametrize("name", RECORDED)
def test_the_docs_list_every_recorded_type(name):
    console_table = (DOCS / "console.md").read_text().split("### `events", 1)[1].split("###", 1)[0]
    assert f"`{name}`" in console_table
    assert f"`{name}`" in (DOCS / "notifications.md").read_text()


def test_local_only_subscribers_do_not_hear_other_processes_events():
    bus = EventBus()
    everything: list = []
    local: list = []
    bus.subscribe(everything.append)
    bus.subscribe(local.append, local_only=True)
    mine, theirs = full_event("client.connected"), full_event("token.revoked")
    bus.publish(mine)
    bus.publish(theirs, local=False)
    assert everything == [mine, theirs] and local == [mine]


def test_a_failing_subscriber_does_not_stop_the_others():
    bus = EventBus()
    heard: list = []

    def broken(event: Any) -> None:
        raise RuntimeError("bug")

    bus.subscribe(broken)
    bus.subscribe(heard.append)
    bus.publish(full_event("client.kicked"))
    assert len(heard) == 1
