"""The benchmark harness's own logic: the profile's top table and the peer's access log config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.nginx import ACCESS_LOG_NAME, peer_conf
from benchmarks.profile import frame_name, top_table


def test_frame_names_keep_the_function_and_the_package_relative_file() -> None:
    frame = "Proxy.handle (/work/main/gateway/proxy/handler.py:141)"
    assert frame_name(frame) == "Proxy.handle (gateway/proxy/handler.py)"
    site = "StreamWriter._writelines (/venv/lib/python3.11/site-packages/aiohttp/http_writer.py:9)"
    assert frame_name(site) == "StreamWriter._writelines (aiohttp/http_writer.py)"
    assert frame_name("<module> (/x/y/tool.py:3)") == "<module> (tool.py)"


def test_the_top_table_counts_self_and_total_time_once_per_stack() -> None:
    collapsed = "\n".join(
        [
            "run (/a/asyncio/runners.py:1);handle (/a/gateway/proxy/handler.py:2) 6",
            "run (/a/asyncio/runners.py:1);handle (/a/gateway/proxy/handler.py:3);"
            "write (/a/gateway/upstream/connection.py:4) 3",
            # A recursive stack counts once in the total of each function.
            "run (/a/asyncio/runners.py:1);run (/a/asyncio/runners.py:9) 1",
            "thread (0x7f00);run (/a/asyncio/runners.py:1) 2",
            "garbage line without a count",
        ]
    )
    samples, rows = top_table(collapsed)
    assert samples == 12
    table = {name: (own, total) for name, own, total in rows}
    assert table["handle (gateway/proxy/handler.py)"] == (6, 9)
    assert table["write (gateway/upstream/connection.py)"] == (3, 3)
    assert table["run (asyncio/runners.py)"] == (3, 12)
    assert not any(name.startswith("thread") for name in table)
    assert rows[0][0] == "handle (gateway/proxy/handler.py)"  # most self time first


def test_the_logging_peer_logs_in_its_server_block_and_the_other_does_not(tmp_path: Path) -> None:
    logging_conf = peer_conf(tmp_path, 8080, 8081, 1, access_log=True)
    # http-level `access_log off` cancels every access_log of that level, whatever the order:
    # the peer's log must be set in the server block.
    server = logging_conf[logging_conf.index("    server {") :]
    assert re.search(rf"access_log {tmp_path}/{ACCESS_LOG_NAME} kg buffer=\S+ flush=\S+;", server)
    assert "log_format kg " in logging_conf[: logging_conf.index("    server {")]
    quiet_conf = peer_conf(tmp_path, 8080, 8081, 1)
    assert ACCESS_LOG_NAME not in quiet_conf and "log_format" not in quiet_conf


@pytest.mark.slow
async def test_the_fleet_load_child_paces_keyed_requests_at_the_rate_it_states(
    tmp_path: Path,
) -> None:
    """The fleet's load is an open-loop paced client (not unthrottled wrk) and reports its rate."""
    import asyncio

    from aiohttp import web

    from benchmarks import fleet
    from benchmarks.nginx import SMALL_PATH

    keys_seen: list[str] = []

    async def small(request: web.Request) -> web.Response:
        keys_seen.append(request.headers.get("X-API-Key", ""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get(SMALL_PATH, small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        child = await fleet.start_load(port, "kg_bench", tmp_path, "load")
        await asyncio.sleep(2.0)
        rate = await asyncio.to_thread(fleet.stop_load, child, child.log_path)
    finally:
        await runner.cleanup()
    # Asked LOAD_RATE; an open-loop client on a loaded 2-core machine stays within 20 %.
    assert 0.8 * fleet.LOAD_RATE <= rate <= 1.2 * fleet.LOAD_RATE
    assert len(keys_seen) <= 1.2 * fleet.LOAD_RATE * 3  # never unthrottled
    assert set(keys_seen) == {"kg_bench"}


def test_the_forward_auth_contender_runs_the_deploy_example_with_its_ports_and_logs(
    tmp_path: Path,
) -> None:
    from benchmarks.nginx import FORWARD_AUTH_CONF, forward_auth_conf

    conf = forward_auth_conf(tmp_path, 18000, 19000, 18080, 1)
    site = (tmp_path / "site.conf").read_text(encoding="utf-8")
    assert site == FORWARD_AUTH_CONF.read_text(encoding="utf-8").replace(
        "127.0.0.1:8080", "127.0.0.1:18080"
    ).replace("127.0.0.1:9000", "127.0.0.1:19000").replace("127.0.0.1:8000", "127.0.0.1:18000")
    assert "access_log off" not in conf
    assert re.search(rf"access_log {tmp_path}/{ACCESS_LOG_NAME} kgfa buffer=\S+ flush=\S+;", conf)
    assert "key=$keygate_user" in conf and f"include {tmp_path}/site.conf;" in conf


def _upstream_blocks(conf: str) -> dict[str, dict[str, str]]:
    """Return each `upstream NAME { ... }` block's directives (name -> value text)."""
    blocks = {}
    for name, body in re.findall(r"upstream (\w+) \{(.*?)\}", conf, flags=re.S):
        directives = re.findall(r"^\s*(\w+)\s+([^;]+);", body, flags=re.M)
        blocks[name] = dict(directives)
    return blocks


def test_the_nginx_example_reuses_connections_to_keygate_and_the_backend_as_the_peer_does() -> None:
    # The contender must not pay for reconnects the peer never makes: nginx's default
    # keepalive_requests (1000) would close a connection to keygate every 1000 decisions.
    from benchmarks.nginx import (
        FORWARD_AUTH_CONF,
        KEEPALIVE_REQUESTS,
        UPSTREAM_KEEPALIVE,
    )
    from gateway.settings.models import ClientLimits

    blocks = _upstream_blocks(FORWARD_AUTH_CONF.read_text(encoding="utf-8"))
    assert set(blocks) == {"keygate_decide", "keygate_backend"}
    for directives in blocks.values():
        assert int(directives["keepalive"]) >= UPSTREAM_KEEPALIVE
        assert int(directives["keepalive_requests"]) >= KEEPALIVE_REQUESTS
    # nginx drops an idle connection to keygate before keygate closes it: never a reused
    # connection the other side already closed.
    timeout = blocks["keygate_decide"]["keepalive_timeout"]
    assert timeout.endswith("s") and float(timeout[:-1]) < ClientLimits().keepalive_timeout


@pytest.mark.slow
def test_the_stub_decider_allows_every_request_with_the_acting_user(tmp_path: Path) -> None:
    """The floor contender's decider (real nginx): any decision request is 200 with the
    acting user, as keygate's allowed answer, and costs nginx's own speed."""
    import http.client

    from support.fronts import find_nginx, tool_or_skip
    from support.workers import free_port

    from benchmarks.nginx import start_stub_decider

    binary = tool_or_skip("nginx", find_nginx())
    port = free_port()
    decider = start_stub_decider(binary, tmp_path, port, "bench")
    try:
        for path in ("/_keygate/nginx", "/anything?x=1"):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path, headers={"X-Original-URI": "/1Integrate/rest/x"})
            answer = connection.getresponse()
            assert answer.status == 200, path
            assert answer.getheader("X-Acting-User") == "bench"
            assert answer.getheader("Cache-Control") == "no-store"
            connection.close()
    finally:
        decider.stop()
