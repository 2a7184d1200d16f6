"""Request ids that hold keys, and text access lines whose fields cannot be forged.

A real gateway in front of the demo backend; access lines are read as the logging module
receives them and split the way a log reader would (shell-style words, quotes honoured).
"""

from __future__ import annotations

import logging
import shlex

import pytest
from support.config import ALL_ROLE, REST, add_key
from support.http import http_request, raw_request

from gateway.keys import keyformat as keys
from gateway.proxy import access_log
from gateway.proxy.hygiene import REQUEST_ID_HEADER
from gateway.serve.wiring import RunningGateway

ECHO = f"{REST}/_echo/rid"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The text access lines logged so far."""
    return [r.getMessage() for r in caplog.records if r.name == "keygate.access"]


def fields(line: str) -> dict[str, list[str]]:
    """The `name=value` words of a text line, by name (a forged field shows as a second one)."""
    found: dict[str, list[str]] = {}
    for word in shlex.split(line):
        name, equals, value = word.partition("=")
        if equals:
            found.setdefault(name, []).append(value)
    return found


@pytest.mark.parametrize("shape", ["{key}", "trace-{key}", "{key}:1", "{typo}"])
async def test_a_request_id_holding_a_key_is_refused_and_never_repeated(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture, shape: str
) -> None:
    caplog.set_level(logging.INFO, logger="keygate.access")
    key = await add_key(gateway, "rid-bot", [ALL_ROLE])
    typo = key[:-1] + ("A" if key[-1] != "A" else "B")  # checksum wrong: still a secret
    offered = shape.format(key=key, typo=typo)
    for credential in ([("X-API-Key", key)], []):
        response = await raw_request(
            gateway.proxy_port,
            http_request("GET", ECHO, [(REQUEST_ID_HEADER, offered), *credential]),
        )
        assert response.status == 400, response.body
        assert response.json()["error"] == "bad_request_id"
        (answered,) = response.header_values(REQUEST_ID_HEADER)
        assert key[10:30] not in answered and key[10:30] not in response.body.decode()
    lines = access_lines(caplog)
    assert len(lines) == 2
    assert not any(key[10:30] in line for line in lines), lines


@pytest.mark.parametrize("offered", ["kg_short", "trace-kg_1234", "kg_abcdefg"])
async def test_ids_that_only_start_like_a_key_are_kept(
    gateway: RunningGateway, offered: str
) -> None:
    response = await raw_request(
        gateway.proxy_port, http_request("GET", ECHO, [(REQUEST_ID_HEADER, offered)])
    )
    assert response.status == 200
    assert response.header_values(REQUEST_ID_HEADER) == [offered]


async def test_an_id_holding_a_key_fragment_past_its_display_prefix_is_replaced(
    gateway: RunningGateway,
) -> None:
    """A truncated key is no key (not refused), but its secret part must not travel."""
    offered = "kg_" + "a" * 20
    response = await raw_request(
        gateway.proxy_port, http_request("GET", ECHO, [(REQUEST_ID_HEADER, offered)])
    )
    assert response.status == 200
    (answered,) = response.header_values(REQUEST_ID_HEADER)
    assert "a" * 8 not in answered
    assert "a" * 8 not in str(response.json()["headers"])


@pytest.mark.parametrize(
    "name",
    [
        "admin rid=spoof key=admin-wide",
        'ops "quoted" key=x',
        "back\\slash key=y",
        "a=b",
        "trailing incomplete",
    ],
)
async def test_a_key_name_cannot_forge_fields_in_the_text_line(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.INFO, logger="keygate.access")
    key = await add_key(gateway, name, [ALL_ROLE])
    response = await raw_request(
        gateway.proxy_port,
        http_request("GET", ECHO, [(REQUEST_ID_HEADER, "r-1"), ("X-API-Key", key)]),
    )
    assert response.status == 200
    (line,) = access_lines(caplog)
    assert fields(line)["key"] == [name], line
    assert fields(line)["rid"] == ["r-1"], line
    assert not line.endswith(" incomplete"), line


async def test_a_quote_in_the_target_stays_inside_the_request_field(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="keygate.access")
    target = f'{ECHO}?q="x"&b=\\'
    response = await raw_request(gateway.proxy_port, http_request("GET", target))
    assert response.status == 200
    (line,) = access_lines(caplog)
    words = shlex.split(line)
    assert words[1] == f"GET {ECHO}?q=%22x%22&b=%5C", line
    assert words[2] == "200", line


def test_plain_names_stay_bare_and_others_are_quoted() -> None:
    assert access_log.text_field("reporting-bot_2.0") == "reporting-bot_2.0"
    assert access_log.text_field("?kg_abcdefg...") == "?kg_abcdefg..."
    assert access_log.text_field("two words") == '"two words"'
    assert access_log.text_field('say "hi"') == '"say \\"hi\\""'


def test_key_shapes_are_found_anywhere() -> None:
    key = keys.generate_key()
    assert keys.holds_key_shape(key)
    assert keys.holds_key_shape(f"x-{key}-y")
    assert not keys.holds_key_shape(key[:-1])
    assert not keys.holds_key_shape("kg-" + key[3:])
