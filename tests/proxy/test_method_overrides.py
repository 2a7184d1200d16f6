"""Method overrides as backend frameworks read them, through a real gateway to a real backend.

A key that may only GET the echo path sends each spelling of an override naming DELETE: the
gateway must decide the request for DELETE too (403), however the name is spelt, because PHP
(Laravel, Symfony), Rack, servlet containers and Express each read the name their own way.
A key that may DELETE gets every spelling through to the backend unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.config import ALL_ROLE, REST, add_key, policy_data, write_config
from support.http import http_request, raw_request
from support.upstreams import Backend

from gateway.proxy import hygiene
from gateway.serve.wiring import RunningGateway, running_gateway
from gateway.settings import load_settings

ECHO = f"{REST}/_echo/override"
READER_ROLE = "echo-reader"

# Query strings that some framework reads as `_method=DELETE` (or `delete`).
QUERY_SPELLINGS = [
    "_method=DELETE",
    ".method=DELETE",  # PHP: `.` becomes `_`
    "%2Emethod=DELETE",  # ...after percent-decoding
    "%2emethod=DELETE",
    "+_method=DELETE",  # PHP: `+` is a space, leading spaces trimmed
    "%20_method=DELETE",
    "++.method=DELETE",
    "%20%2Emethod=DELETE",
    "+method=DELETE&_method=DELETE",
    "_method[]=DELETE",  # PHP and Rack: an array named `_method`
    "_method[0]=DELETE",
    "_METHOD=DELETE",  # case-insensitive readers
    "_Method=delete",
    "%5Fmethod=DELETE",
    "%5F%6D%65%74%68%6F%64=DELETE",
    "_me%74hod=DELETE",
    "a=1&_method=GET&_method=DELETE",  # duplicates: PHP keeps the last, others the first
    "_method=DELETE&_method=GET",
    "a=1;_method=DELETE",  # `;` separates parameters in older Rack
    "_method=%44ELETE",  # the value percent-encoded
    "_method=+DELETE+",
]
# Headers Jersey, Spring, ASP.NET, Express and Laravel read as an override.
HEADER_SPELLINGS = [
    ("X-HTTP-Method-Override", "DELETE"),
    ("x-http-method-override", "delete"),
    ("X_HTTP_Method_Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X.Method.Override", "DELETE"),
]


@pytest.fixture
async def override_gateway(
    tmp_path: Path, backend: Backend, sqlite_template: Path
) -> AsyncIterator[RunningGateway]:
    """A gateway whose policy adds a role that may only GET the echo path."""
    policy = policy_data()
    policy["roles"][READER_ROLE] = {"allow": [f"GET {REST}/_echo/**"]}
    config = write_config(
        tmp_path / "config", backend.url, policy=policy, store_from=sqlite_template
    )
    async with running_gateway(load_settings(config), serve_admin=False) as running:
        yield running


@pytest.mark.parametrize("query", QUERY_SPELLINGS)
async def test_every_spelling_of_the_method_parameter_is_decided(
    override_gateway: RunningGateway, query: str
) -> None:
    reader = await add_key(override_gateway, "override-reader", [READER_ROLE])
    writer = await add_key(override_gateway, "override-writer", [ALL_ROLE])
    target = f"{ECHO}?{query}"
    refused = await raw_request(
        override_gateway.proxy_port, http_request("GET", target, [("X-API-Key", reader)])
    )
    assert refused.status == 403, refused.body
    assert refused.json()["error"] == "forbidden"
    allowed = await raw_request(
        override_gateway.proxy_port, http_request("GET", target, [("X-API-Key", writer)])
    )
    assert allowed.status == 200, allowed.body
    assert allowed.json()["path"] == target  # forwarded byte for byte, parameter and all


@pytest.mark.parametrize(("name", "value"), HEADER_SPELLINGS)
async def test_every_spelling_of_an_override_header_is_decided(
    override_gateway: RunningGateway, name: str, value: str
) -> None:
    reader = await add_key(override_gateway, "override-reader", [READER_ROLE])
    refused = await raw_request(
        override_gateway.proxy_port,
        http_request("GET", ECHO, [(name, value), ("X-API-Key", reader)]),
    )
    assert refused.status == 403, refused.body
    assert refused.json()["error"] == "forbidden"


@pytest.mark.parametrize("query", ["_method=DEL+ETE", ".method=GET,DELETE", "_method[]=1"])
async def test_an_override_parameter_naming_no_single_method_is_400(
    override_gateway: RunningGateway, query: str
) -> None:
    reader = await add_key(override_gateway, "override-reader", [READER_ROLE])
    response = await raw_request(
        override_gateway.proxy_port,
        http_request("GET", f"{ECHO}?{query}", [("X-API-Key", reader)]),
    )
    assert response.status == 400, response.body
    assert response.json()["error"] == "bad_method_override"


@pytest.mark.parametrize(
    "query", ["method=DELETE", "x_method=DELETE", "_methods=DELETE", "_method.=DELETE", "a=b"]
)
async def test_other_parameters_are_not_overrides(
    override_gateway: RunningGateway, query: str
) -> None:
    reader = await add_key(override_gateway, "override-reader", [READER_ROLE])
    response = await raw_request(
        override_gateway.proxy_port,
        http_request("GET", f"{ECHO}?{query}", [("X-API-Key", reader)]),
    )
    assert response.status == 200, response.body


@pytest.mark.parametrize(
    ("raw", "read"),
    [
        ("_method", "_method"),
        (".method", "_method"),
        ("+_method", "_method"),
        ("%20.method", "_method"),
        ("_method[]", "_method"),
        ("_method%00x", "_method"),
        ("_METHOD", "_method"),
        ("_method.", "_method_"),  # PHP reads `_method_`: not an override
        ("a+b.c", "a_b_c"),
    ],
)
def test_parameter_names_are_read_the_php_way(raw: str, read: str) -> None:
    assert hygiene.parameter_name(raw) == read


def test_a_query_without_a_method_name_is_not_split() -> None:
    assert hygiene.query_method_overrides("/x?a=1&b=2") == []
    assert hygiene.query_method_overrides("/x") == []
    assert hygiene.query_method_overrides("/x?a=1&_Method=put&_method=%50ATCH") == ["put", "PATCH"]
