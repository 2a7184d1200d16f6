"""Request ids and JSON logs: one id follows a request upstream, back and through the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import (
    ALL_ROLE,
    REST,
    Backend,
    add_key,
    create_key,
    free_port,
    http_request,
    raw_request,
    reaped,
    start_serve,
    wait_for_port,
    write_config,
)

from gateway.app import RunningGateway
from gateway.hygiene import REQUEST_ID_HEADER

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
        answer = await raw_request(port, http_request("GET", f"{ECHO}?k={secret}", headers))
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
    assert secret not in json.dumps(records)
    assert line["path"].endswith("?k=" + secret[:10] + "...")
