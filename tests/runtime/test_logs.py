"""Request ids and JSON logs: one id follows a request upstream, back and through the log."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.config import ALL_ROLE, REST, add_key, create_key, write_config
from support.http import http_request, raw_request
from support.processes import free_port, reaped, start_serve, wait_for_port
from support.upstreams import Backend

from gateway.keys import keyformat as keys
from gateway.proxy.access_log import redact_keys
from gateway.proxy.access_writer import AccessWriter
from gateway.proxy.hygiene import REQUEST_ID_HEADER
from gateway.proxy.notes import CLIENT_ABANDONED, RequestNotes
from gateway.runtime.logs import TEXT_FORMAT, JsonFormatter, json_access_line, json_head
from gateway.serve.wiring import RunningGateway

ECHO = f"{REST}/_echo/rid"


def ids_seen_upstream(response_json: dict[str, list[list[str]]]) -> list[str]:
    return [v for n, v in response_json["headers"] if n.lower() == REQUEST_ID_HEADER.lower()]


async def test_a_well_formed_request_id_goes_upstream_and_comes_back(
    gateway: RunningGateway,
) -> None:
    key = await add_key(gateway, "rid-bot", [ALL_ROLE])
    headers = [(REQUEST_ID_HEADER, "trace-42:a.b"), ("X-API-Key", key)]
    response = await raw_request(gateway.proxy_port, http_request("GET", ECHO, headers))
    assert ids_seen_upstream(response.json()) == ["trace-42:a.b"]
    assert response.header_values(REQUEST_ID_HEADER) == ["trace-42:a.b"]


@pytest.mark.parametrize("offered", [None, "has space", "x" * 129, 'quote"d', ""])
async def test_a_missing_or_malformed_id_is_replaced_by_one_of_ours(
    gateway: RunningGateway, offered: str | None
) -> None:
    headers = [] if offered is None else [(REQUEST_ID_HEADER, offered)]
    headers += [(REQUEST_ID_HEADER, "second")] if offered == "" else []
    response = await raw_request(gateway.proxy_port, http_request("GET", ECHO, headers))
    upstream = ids_seen_upstream(response.json())
    assert len(upstream) == 1 and upstream[0] not in ("has space", "x" * 129, 'quote"d', "")
    assert response.header_values(REQUEST_ID_HEADER) == upstream


async def test_a_request_id_holding_a_key_is_refused_and_a_part_of_one_replaced(
    gateway: RunningGateway,
) -> None:
    key = await add_key(gateway, "rid-key-bot", [ALL_ROLE])
    for offered in (key, f"trace-{key}"):
        headers = [(REQUEST_ID_HEADER, offered), ("X-API-Key", key)]
        response = await raw_request(gateway.proxy_port, http_request("GET", ECHO, headers))
        assert response.status == 400
        assert response.json()["error"] == "bad_request_id"
        assert key[keys.DISPLAY_PREFIX_LENGTH :] not in response.body.decode()
    # A truncated key is no key, but its secret part must not travel either: replaced.
    headers = [(REQUEST_ID_HEADER, key[:20]), ("X-API-Key", key)]
    response = await raw_request(gateway.proxy_port, http_request("GET", ECHO, headers))
    (upstream,) = ids_seen_upstream(response.json())
    assert key[keys.DISPLAY_PREFIX_LENGTH : 20] not in upstream
    assert response.header_values(REQUEST_ID_HEADER) == [upstream]
    # An id that merely contains the letters stays the client's.
    headers = [(REQUEST_ID_HEADER, "pkg_v1"), ("X-API-Key", key)]
    response = await raw_request(gateway.proxy_port, http_request("GET", ECHO, headers))
    assert ids_seen_upstream(response.json()) == ["pkg_v1"]


@pytest.mark.parametrize(
    ("logged", "cut"),
    [
        ("GET /a?k=kg_ABCDEFGhijklmnop HTTP/1.1", "GET /a?k=kg_ABCDEFG... HTTP/1.1"),
        ("/a/kg%5FABCDEFGhijklmnop/b", "/a/kg%5FABCDEFG.../b"),
        ("/a/kg%5fABCDEFGhijklmnop", "/a/kg%5fABCDEFG..."),
        ("/a?q=kg%255FABCDEFGhijklmnop&x=1", "/a?q=kg%255FABCDEFG...&x=1"),
        ("/a?q=kg_ABCDEFGh%69jklmnop", "/a?q=kg_ABCDEFG..."),
        ("/a?q=kg_ABC%44EFGhijklmnop", "/a?q=kg_ABC%44EFG..."),
        ("x=%20kg_ABCDEFGhijklmnop", "x=%20kg_ABCDEFG..."),
        ('{"q":"kg_ABCDEFGhijklmnop"}', '{"q":"kg_ABCDEFG..."}'),
        ("kg_ABCDEFG and kg_short", "kg_ABCDEFG and kg_short"),  # a display prefix at most
        ("no key here", "no key here"),
    ],
)
def test_keys_are_cut_to_their_display_prefix_in_every_encoding(logged: str, cut: str) -> None:
    assert redact_keys(logged) == cut


async def test_refusals_carry_a_request_id_too(gateway: RunningGateway) -> None:
    refused = await raw_request(
        gateway.proxy_port, http_request("GET", f"{REST}/a%2fb", [(REQUEST_ID_HEADER, "r-1")])
    )
    assert refused.status == 400
    assert refused.header_values(REQUEST_ID_HEADER) == ["r-1"]


@pytest.mark.slow
async def test_json_logs_are_one_object_per_line_with_the_request_fields(
    tmp_path: Path, backend: Backend
) -> None:
    port = free_port()
    config = write_config(
        tmp_path / "json",
        backend.url,
        listen_port=port,
        admin_port=free_port(),
        extra={"log": {"format": "json"}},
    )
    secret = await create_key(config, "json-bot", [ALL_ROLE])
    serve = start_serve(config, port, tmp_path / "json.log")
    with reaped(serve):
        await wait_for_port(port, process=serve.process)
        headers = [(REQUEST_ID_HEADER, "json-1"), ("X-API-Key", secret)]
        # A whole key in the target is refused (key_misplaced); a part of one is forwarded
        # and must be cut in the line all the same.
        fragment = secret[:20]
        answer = await raw_request(port, http_request("GET", f"{ECHO}?k={fragment}", headers))
        assert answer.status == 200
        assert serve.stop() == 0
    records = [json.loads(line) for line in serve.log_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "worker", "message"} <= set(r) for r in records)
    access = [r for r in records if r["logger"] == "keygate.access"]
    assert len(access) == 1, records
    line = access[0]
    assert line["request_id"] == "json-1"
    assert line["key"] == "json-bot"
    assert (line["status"], line["upstream_status"], line["method"]) == (200, 200, "GET")
    assert line["upstream_ms"] >= 0 and line["duration_ms"] >= line["upstream_ms"] * 0.5
    assert secret not in json.dumps(records) and fragment[10:] not in json.dumps(records)
    assert line["path"].endswith("?k=" + secret[:10] + "...")


maybe_text = st.none() | st.text()
maybe_ms = st.none() | st.floats(min_value=0, max_value=1e7, allow_nan=False)


@given(
    request_id=maybe_text,
    method=st.text(min_size=1),
    path=st.text(),
    status=st.integers(100, 599),
    size=st.integers(0, 2**50),
    duration_ms=st.floats(min_value=0, max_value=1e7, allow_nan=False),
    noted=st.booleans(),
    key=maybe_text,
    upstream_status=st.none() | st.integers(100, 599),
    upstream_ms=maybe_ms,
    incomplete=st.booleans(),
    received=st.none() | st.integers(0, 2**40),
    remote=maybe_text,
    decision=st.none() | st.sampled_from(["nginx", "forward", "envoy", "unknown"]),
)
def test_the_buffered_json_line_is_what_the_json_formatter_writes(
    request_id: str | None,
    method: str,
    path: str,
    status: int,
    size: int,
    duration_ms: float,
    noted: bool,
    key: str | None,
    upstream_status: int | None,
    upstream_ms: float | None,
    incomplete: bool,
    received: int | None,
    remote: str | None,
    decision: str | None,
) -> None:
    # The writer's line is built field by field for speed; the logging path's formatter is
    # the reference: same fields, same order, same escaping, byte for byte.
    notes = None
    if noted:
        notes = RequestNotes(request_id or "")
        notes.key_name, notes.upstream_status = key, upstream_status
        notes.upstream_ms, notes.incomplete = upstream_ms, incomplete
        if received is not None:  # the client left: ended early, with what it had sent
            notes.ended, notes.received = CLIENT_ABANDONED, received
        notes.decision = decision  # a forward-auth answer: its endpoint
    message = f"{method} {path} {status}"
    extra: dict[str, object] = {
        "request_id": request_id,
        "method": method,
        "path": path,
        "status": status,
        "bytes": size,
        "duration_ms": duration_ms,
        "remote": remote,
    }
    if notes is not None:
        extra.update(key=key, upstream_status=upstream_status, upstream_ms=upstream_ms)
        extra["incomplete"] = True if incomplete else None
        if received is not None:
            extra.update(ended=CLIENT_ABANDONED.name, received=received)
        extra["decision"] = decision
    record = logging.makeLogRecord(
        {"name": "keygate.access", "levelname": "INFO", "msg": "%s", "args": (message,),
         "created": 1_700_000_000.123, "msecs": 123.0, "process": 4242, **extra}
    )  # fmt: skip
    fields = (request_id, method, path, status, size, duration_ms)
    head = json_head("2023-11-14T22:13:20.123Z", 4242)
    assert json_access_line(head, message, fields, notes, remote) == JsonFormatter().format(record)


def test_the_buffered_text_line_starts_like_every_other_log_line() -> None:
    record = logging.makeLogRecord({"name": "keygate.access", "levelname": "INFO", "msg": "x"})
    reference = logging.Formatter(TEXT_FORMAT).format(record)
    shape = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \d+ INFO keygate\.access: "
    assert re.fullmatch(shape + "x", reference)
    assert re.fullmatch(shape, AccessWriter().text_prefix())
