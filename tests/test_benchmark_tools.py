"""The benchmark harness's own logic: the profile's top table and the peer's access log config."""

from __future__ import annotations

import re
from pathlib import Path

from benchmarks.nginx import ACCESS_LOG_NAME, peer_conf
from benchmarks.profile import frame_name, top_table


def test_frame_names_keep_the_function_and_the_package_relative_file() -> None:
    frame = "Proxy.handle (/work/main/gateway/proxy.py:141)"
    assert frame_name(frame) == "Proxy.handle (gateway/proxy.py)"
    site = "StreamWriter._writelines (/venv/lib/python3.11/site-packages/aiohttp/http_writer.py:9)"
    assert frame_name(site) == "StreamWriter._writelines (aiohttp/http_writer.py)"
    assert frame_name("<module> (/x/y/tool.py:3)") == "<module> (tool.py)"


def test_the_top_table_counts_self_and_total_time_once_per_stack() -> None:
    collapsed = "\n".join(
        [
            "run (/a/asyncio/runners.py:1);handle (/a/gateway/proxy.py:2) 6",
            "run (/a/asyncio/runners.py:1);handle (/a/gateway/proxy.py:3);"
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
    assert table["handle (gateway/proxy.py)"] == (6, 9)
    assert table["write (gateway/upstream/connection.py)"] == (3, 3)
    assert table["run (asyncio/runners.py)"] == (3, 12)
    assert not any(name.startswith("thread") for name in table)
    assert rows[0][0] == "handle (gateway/proxy.py)"  # most self time first


def test_the_logging_peer_logs_in_its_server_block_and_the_other_does_not(tmp_path: Path) -> None:
    logging_conf = peer_conf(tmp_path, 8080, 8081, 1, access_log=True)
    # http-level `access_log off` cancels every access_log of that level, whatever the order:
    # the peer's log must be set in the server block.
    server = logging_conf[logging_conf.index("    server {") :]
    assert re.search(rf"access_log {tmp_path}/{ACCESS_LOG_NAME} kg buffer=\S+ flush=\S+;", server)
    assert "log_format kg " in logging_conf[: logging_conf.index("    server {")]
    quiet_conf = peer_conf(tmp_path, 8080, 8081, 1)
    assert ACCESS_LOG_NAME not in quiet_conf and "log_format" not in quiet_conf
