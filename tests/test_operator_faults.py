"""Faults operators hit at start and stop: bad TLS material, missing extras, busy ports, pipes."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from pathlib import Path

import pytest
from conftest import (
    Backend,
    free_port,
    run_cli,
    write_config,
)

from gateway.app import running_gateway
from gateway.settings import ConfigError, UpstreamTLS, load_settings

NOT_PEM = "this is not a PEM file\n"


def one_error_line(stderr: str) -> str:
    """The single `keygate: ...` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    assert "Event loop is closed" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("keygate: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def tls_config(directory: Path, tls: dict[str, str]) -> Path:
    """A config for an https:// upstream with `tls` (file names relative to `directory`)."""
    return write_config(
        directory,
        "https://127.0.0.1:9",
        listen_port=free_port(),
        admin_port=free_port(),
        extra={"upstream": {"tls": tls}},
    )


@pytest.mark.parametrize("key", ["ca_file", "cert_file"])
def test_non_pem_tls_file_is_a_config_problem(tmp_path: Path, key: str) -> None:
    directory = tmp_path / key
    config = tls_config(directory, {key: "bad.pem"})
    (directory / "bad.pem").write_text(NOT_PEM, encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert f"upstream.tls.{key}" in str(raised.value)
    assert "PEM" in str(raised.value)


@pytest.mark.slow
def test_serve_with_a_non_pem_ca_file_fails_with_one_line_and_no_traceback(
    tmp_path: Path,
) -> None:
    config = tls_config(tmp_path / "serve", {"ca_file": "bad.pem"})
    (tmp_path / "serve" / "bad.pem").write_text(NOT_PEM, encoding="utf-8")
    result = run_cli("serve", "--config", str(config))
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Event loop" not in result.stderr, result.stderr
    assert result.stderr.startswith("keygate: invalid config"), result.stderr
    assert "upstream.tls.ca_file" in result.stderr and "PEM" in result.stderr


async def test_a_failure_building_the_upstream_client_stops_everything_started(
    tmp_path: Path, backend: Backend
) -> None:
    """TLS material that breaks after the config check: no task left running, store closed."""
    directory = tmp_path / "late"
    config = write_config(directory, backend.url.replace("http:", "https:"))
    (directory / "bad.pem").write_text(NOT_PEM, encoding="utf-8")
    settings = load_settings(config)
    bad = UpstreamTLS(ca_file=str(directory / "bad.pem"))
    settings = dataclasses.replace(
        settings, upstream=dataclasses.replace(settings.upstream, tls=bad)
    )
    before = asyncio.all_tasks()
    with pytest.raises(OSError):
        async with running_gateway(settings):
            raise AssertionError("the gateway must not start")
    await asyncio.sleep(0)
    left = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not left, left


@pytest.mark.slow
@pytest.mark.parametrize("which", ["proxy", "admin"])
def test_port_in_use_names_the_listener_and_address(tmp_path: Path, which: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        ports = {"proxy": free_port(), "admin": free_port(), which: busy}
        config = write_config(
            tmp_path / which,
            "http://127.0.0.1:9",
            listen_port=ports["proxy"],
            admin_port=ports["admin"],
        )
        result = run_cli("serve", "--config", str(config))
    assert result.returncode != 0
    line = one_error_line(result.stderr)
    assert f"{which} listener on 127.0.0.1:{busy}" in line and "address already in use" in line, (
        line
    )
    assert "Errno" not in line
    assert "drained" not in result.stderr, result.stderr
