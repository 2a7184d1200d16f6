"""`keygate demo --front nginx`: Debian's nginx in front of the demo backend, keygate deciding.

The site is the forward-auth example operators copy (deploy/nginx/keygate-forward-auth.conf,
shipped as gateway/examples/nginx-forward-auth.conf) with the demo's ports in place of the
addresses it names; nginx runs in the foreground from a prefix in the demo's data directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

NGINX_FALLBACK = "/usr/sbin/nginx"  # Debian installs nginx outside a normal user's PATH
EXAMPLE = "examples/nginx-forward-auth.conf"
# The addresses the example names: keygate's proxy listener, the backend, the clients' side.
EXAMPLE_KEYGATE = "127.0.0.1:8080"
EXAMPLE_BACKEND = "127.0.0.1:9000"
EXAMPLE_FRONT = "127.0.0.1:8000"
INSTALL_HINT = "install it with `sudo apt-get install -y nginx` (Debian/Ubuntu)"
START_TIMEOUT = 10.0  # seconds nginx gets to check its config and listen
STOP_TIMEOUT = 10.0  # seconds nginx gets to exit after SIGTERM before SIGKILL
POLL_INTERVAL = 0.05  # seconds between checks that nginx listens


class FrontError(OSError):
    """nginx is missing, rejects its config, or did not start (the message says which)."""


def find_nginx() -> str:
    """Return the nginx binary (PATH, then /usr/sbin/nginx), or raise FrontError with a hint."""
    found = shutil.which("nginx")
    if found:
        return found
    if os.access(NGINX_FALLBACK, os.X_OK):
        return NGINX_FALLBACK
    raise FrontError(f"--front nginx needs nginx, which is not installed: {INSTALL_HINT}")


def site_config(keygate_port: int, backend_port: int, front_port: int) -> str:
    """Return the forward-auth example with the demo's ports."""
    text = resources.files("gateway").joinpath(EXAMPLE).read_text("utf-8")
    for old, port in (
        (EXAMPLE_KEYGATE, keygate_port),
        (EXAMPLE_BACKEND, backend_port),
        (EXAMPLE_FRONT, front_port),
    ):
        text = text.replace(old, f"127.0.0.1:{port}")
    return text


def main_config(prefix: Path) -> str:
    """Return nginx.conf: foreground, one worker, logs, pid and temp files under `prefix`."""
    # As root, workers would run as nobody, who may not enter the demo's directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {name}_temp_path {prefix}/{name}_temp;\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nworker_processes 1;\npid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log;\nevents {{ worker_connections 512; }}\n"
        f"http {{\n    access_log {prefix}/access.log;\n{temp}"
        f"    include {prefix}/keygate-forward-auth.conf;\n}}\n"
    )


async def _listening(port: int) -> bool:
    """Return True when 127.0.0.1:port accepts a connection."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


@contextlib.asynccontextmanager
async def running_nginx(
    data_dir: Path, keygate_port: int, backend_port: int, front_port: int
) -> AsyncIterator[Path]:
    """Run nginx deciding through keygate for the block; yield its prefix (logs there)."""
    binary = find_nginx()
    prefix = (data_dir / "nginx").resolve()
    prefix.mkdir(parents=True, exist_ok=True)
    site = site_config(keygate_port, backend_port, front_port)
    (prefix / "keygate-forward-auth.conf").write_text(site, encoding="utf-8")
    conf = prefix / "nginx.conf"
    conf.write_text(main_config(prefix), encoding="utf-8")
    argv = [binary, "-p", f"{prefix}/", "-e", f"{prefix}/error.log", "-c", str(conf)]
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while not await _listening(front_port):
            if process.returncode is not None or loop.time() > deadline:
                log = (prefix / "error.log").read_text(errors="replace")[-2000:]
                raise FrontError(f"nginx did not start on 127.0.0.1:{front_port}:\n{log}")
            await asyncio.sleep(POLL_INTERVAL)
        yield prefix
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                process.kill()
                await process.wait()
