"""
The settings each proxy type describes (``gotaxy.proxy.fields``), and what
the faces make of them: the console reads a value from text, the REST API's
schema holds each type's spec, the panel has a label for every setting in
both languages, and ``www/fields.js`` (run under node) turns a form's texts
into frp's keys.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gotaxy.proxy import SpecError, SpecField, describe_types, parse_spec, registry
from gotaxy.proxy.fields import LOCAL_IP, LOCAL_PORT, REMOTE_PORT, ConnectionLimited, StreamLimited, parse_keys
from gotaxy.proxy.tcp import TcpSpec
from gotaxy.web.openapi import openapi_document

WWW = Path(__file__).resolve().parent.parent / "www"


@pytest.mark.parametrize("kind, text, value", [
    ("port", "53", 53), ("integer", "-1", -1), ("size", "1024", 1024), ("size", "1MB", "1MB"),
    ("bool", "true", True), ("bool", "No", False), ("text", "a b", "a b"), ("host", "::1", "::1"),
    ("list", "a.example.com, b.example.com,", ["a.example.com", "b.example.com"]),
    ("map", "X-From=gotaxy, Host = wiki", {"X-From": "gotaxy", "Host": "wiki"}),
])
def test_the_console_reads_each_kind_from_text(kind: str, text: str, value: Any) -> None:
    assert SpecField("someKey", kind).from_text(text) == value


@pytest.mark.parametrize("kind, text, message", [
    ("port", "fifty", "'someKey' must be a whole number, not 'fifty'"),
    ("bool", "perhaps", "'someKey' must be true or false, not 'perhaps'"),
    ("map", "novalue", "'someKey' must be NAME=VALUE pairs separated by commas, not 'novalue'"),
    ("list", ",".join("x" * 65), "'someKey' has more than 64 items"),
    ("text", "x" * 5000, "'someKey' is longer than 4096 characters"),
])
def test_text_that_is_no_value_is_one_sentence_naming_the_key(kind: str, text: str, message: str) -> None:
    with pytest.raises(SpecError) as e:
        SpecField("someKey", kind).from_text(text)
    assert (str(e.value), e.value.key) == (message, "someKey")


def test_a_spec_error_knows_its_key() -> None:
    assert SpecError("'localPort' must be an integer").key == "localPort"
    assert SpecError("'transport.proxyProtocolVersion' must be v1 or v2").key == "transport.proxyProtocolVersion"
    assert SpecError("nothing about one key").key is None
    assert SpecError("a tcp tunnel needs 'localPort'", "localPort").key == "localPort"
    with pytest.raises(SpecError) as e:
        parse_spec({"type": "teleport"})
    assert e.value.key == "type"


def test_parse_keys_refuses_unknown_and_missing_keys_by_name() -> None:
    fields = (LOCAL_IP, LOCAL_PORT, REMOTE_PORT)
    attributes = {"localIP": "local_ip", "localPort": "local_port", "remotePort": "remote_port"}
    assert parse_keys("tcp", fields, {"localPort": 22}, TcpSpec, attributes) == TcpSpec(local_port=22)
    with pytest.raises(SpecError) as e:
        parse_keys("tcp", fields, {"localPort": 22, "subdomain": "x"}, TcpSpec, attributes)
    assert (str(e.value), e.value.key) == (
        "a tcp tunnel has no setting 'subdomain' (it has localIP, localPort and remotePort)", "subdomain")
    with pytest.raises(SpecError) as e:
        parse_keys("tcp", fields, {}, TcpSpec, attributes)
    assert e.value.key == "localPort"


def test_a_field_of_an_unknown_kind_is_a_bug_caught_at_once() -> None:
    with pytest.raises(ValueError):
        SpecField("x", "colour")


def test_every_types_fields_match_what_its_parse_accepts() -> None:
    # A spec built from each type's required fields and defaults parses; its keys are its fields.
    for proxy_type in registry.types():
        keys = {"type": proxy_type.name, **getattr(proxy_type, "example_keys", {})}
        for f in proxy_type.fields:
            if f.required:
                keys[f.key] = {"port": 1, "integer": 1}.get(f.kind, f.default if f.default is not None else "x")
        spec = proxy_type.parse(keys)
        assert set(spec.to_keys()) - {"type"} <= {f.key for f in proxy_type.fields}, proxy_type.name


def test_every_type_inherits_the_shared_rules() -> None:
    # The connection limits (and, for byte-stream types, the bandwidth limit) come from one place:
    # a type gets the validators, the fields the faces draw and the keys from ConnectionLimited.
    for proxy_type in registry.types():
        keys = {"type": proxy_type.name, **getattr(proxy_type, "example_keys", {})}
        keys.update({f.key: 1 for f in proxy_type.fields if f.required})
        spec_class = type(proxy_type.parse(keys))
        assert issubclass(spec_class, ConnectionLimited), proxy_type.name
        keys_of_rules = [f.key for f in spec_class.RULE_FIELDS]
        assert [f.key for f in proxy_type.fields][-len(keys_of_rules):] == keys_of_rules, proxy_type.name
        ruled = {**keys, "transport.maxConnections": 7, "transport.connectionRatePerIP": 30}
        if issubclass(spec_class, StreamLimited):
            ruled.update({"transport.bandwidthLimit": "2MB", "transport.bandwidthLimitMode": "server"})
        spec = proxy_type.parse(ruled)
        assert spec.max_connections == 7 and spec.connection_rate_per_ip == 30
        assert {k: v for k, v in spec.to_keys().items() if k in spec_class.RULE_ATTRIBUTES} == {
            k: v for k, v in ruled.items() if k in spec_class.RULE_ATTRIBUTES}, proxy_type.name
        with pytest.raises(SpecError) as e:
            proxy_type.parse({**keys, "transport.maxConnections": -1})
        assert e.value.key == "transport.maxConnections"


def test_a_stream_types_bandwidth_limit_is_checked_by_the_shared_rule() -> None:
    with pytest.raises(SpecError) as e:
        parse_spec({"type": "tcp", "localPort": 22, "transport.bandwidthLimitMode": "both"})
    assert e.value.key == "transport.bandwidthLimitMode"
    assert TcpSpec(22, bandwidth_limit="1MB").to_keys()["transport.bandwidthLimit"] == "1MB"


def test_the_openapi_document_holds_every_types_spec() -> None:
    document = openapi_document()
    schemas = document["components"]["schemas"]
    schema = {**schemas["TunnelSpec"], "components": document["components"]}
    for spec in [TcpSpec(local_port=22), TcpSpec(local_port=5432, local_ip="::1", remote_port=15432)]:
        jsonschema.validate(spec.to_keys(), schema)
    jsonschema.validate({"localPort": 22}, schema)  # no type: tcp
    for wrong in [{"type": "tcp", "localPort": 0}, {"type": "tcp", "localPort": 22, "subdomain": "x"},
                  {"type": "teleport", "localPort": 22}]:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, schema)
    jsonschema.validate({"types": describe_types()}, {**schemas["ProxyTypes"], "components": document["components"]})


def test_the_panel_has_every_types_labels_in_both_languages() -> None:
    for language in ("en", "zh-CN"):
        strings = json.loads((WWW / "i18n" / f"{language}.json").read_text("utf-8"))
        for proxy_type in registry.types():
            assert f"proxy.{proxy_type.name}" in strings, (language, proxy_type.name)
            for f in proxy_type.fields:
                assert f.label in strings, (language, proxy_type.name, f.key)
                assert not f.hint or f.hint in strings, (language, proxy_type.name, f.hint)


def _node(script: str) -> Any:
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        pytest.skip("no node to run the panel's fields.js: install Debian's nodejs package (see .ci/apt-packages)")
    source = f"const f = require({json.dumps(str(WWW / 'fields.js'))});" + script
    result = subprocess.run([node, "-e", source], capture_output=True, text=True, timeout=60, check=True)
    return json.loads(result.stdout)


def test_the_panel_turns_a_forms_texts_into_frps_keys() -> None:
    fields = describe_types()
    tcp = next(t for t in fields if t["name"] == "tcp")["fields"]
    extra = [SpecField(k, kind).describe() for k, kind in
             [("on", "bool"), ("names", "list"), ("headers", "map"), ("secret", "secret"), ("limit", "size")]]
    texts = {"localIP": " ::1 ", "localPort": "5432", "remotePort": "", "on": True,
             "names": "a.example.com, b.example.com", "headers": "X-A=1, X-B = two", "secret": "", "limit": "1MB"}
    created, edited, bad_port, bad_map = _node(
        f"const fields = {json.dumps(tcp + extra)}; const texts = {json.dumps(texts)};"
        "console.log(JSON.stringify(["
        "  f.specFromTexts(fields, texts, false), f.specFromTexts(fields, texts, true),"
        "  f.specFromTexts(fields, {localPort: '22x'}, false), f.specFromTexts(fields, {headers: 'oops'}, false)]));"
    )
    assert created == {"spec": {"localIP": "::1", "localPort": 5432, "on": True, "names": ["a.example.com", "b.example.com"],
                                "headers": {"X-A": "1", "X-B": "two"}, "limit": "1MB"}, "errors": []}
    # Editing: an emptied input goes back to the default (null); an empty secret stays as it was.
    assert edited["spec"]["remotePort"] is None and "secret" not in edited["spec"]
    assert bad_port["errors"] == [{"key": "localPort", "problem": "integer"}]
    assert bad_map["errors"] == [{"key": "headers", "problem": "map"}]
    # The texts of a spec (the edit form), and back.
    texts_back = _node(
        f"const fields = {json.dumps(tcp + extra)};"
        "const spec = {localIP: '127.0.0.1', localPort: 22, remotePort: 0, on: false, names: ['a', 'b'],"
        "  headers: {A: '1'}, secret: 'hidden'};"
        "console.log(JSON.stringify(Object.fromEntries(fields.map((x) => [x.key, f.textOf(x, spec[x.key])]))));"
    )
    assert texts_back == {"localIP": "127.0.0.1", "localPort": "22", "remotePort": "0", "on": False, "names": "a, b",
                          "headers": "A=1", "secret": "", "limit": "", "transport.proxyProtocolVersion": "",
                          "transport.bandwidthLimit": "", "transport.bandwidthLimitMode": "",
                          "transport.maxConnections": "", "transport.maxConnectionsPerIP": "",
                          "transport.connectionRatePerIP": ""}


def test_the_panel_shows_a_port_address_with_the_servers_host() -> None:
    shown = _node(
        "console.log(JSON.stringify(["
        "  f.addressText({scheme: 'udp', port: 5353, description: 'udp port 5353'}, '203.0.113.5'),"
        "  f.addressText({scheme: 'tcp', port: 16000, description: 'port 16000'}, '::1'),"
        "  f.addressText({scheme: 'http', port: 0, hosts: ['wiki.example.com'], description: 'http://wiki.example.com'},"
        "    '203.0.113.5'),"
        "  f.addressText(null, 'x')]));"
    )
    assert shown == ["udp 203.0.113.5:5353", "[::1]:16000", "http://wiki.example.com", None]


def test_the_panel_shows_a_websites_urls_as_links() -> None:
    links = _node(
        "console.log(JSON.stringify(["
        "  f.addressLinks({scheme: 'http', port: 8080, hosts: ['wiki.example.com', '*.example.com'], paths: ['/', '/api']}),"
        "  f.addressLinks({scheme: 'http', port: 0, hosts: ['wiki.example.com'], paths: []}),"
        "  f.addressLinks({scheme: 'tcp', port: 16000})]));"
    )
    assert links == [
        [{"url": "http://wiki.example.com:8080/", "link": True}, {"url": "http://wiki.example.com:8080/api", "link": True},
         {"url": "http://*.example.com:8080/", "link": False}, {"url": "http://*.example.com:8080/api", "link": False}],
        [{"url": "http://wiki.example.com/", "link": True}],
        [],
    ]
