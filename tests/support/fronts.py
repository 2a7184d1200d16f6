"""Front proxies for the forward-auth tests: Debian's nginx and Caddy run from deploy/ files."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.config import REST
from support.processes import REPO_ROOT, START_TIMEOUT, wait_for_port

from benchmarks.procs import ManagedProcess
from gateway.serve.wiring import RunningGateway

DEPLOY = REPO_ROOT / "deploy"
NGINX_SITE = DEPLOY / "nginx" / "keygate-forward-auth.conf"
CADDYFILE = DEPLOY / "caddy" / "Caddyfile"
NGINX_FALLBACK = "/usr/sbin/nginx"  # Debian installs nginx outside a normal user's PATH
# Seconds `nginx -t` or `caddy validate` may take.
CHECK_TIMEOUT = 30.0
# The addresses the deploy files name; tests put their own free ports in their place.
DEPLOY_KEYGATE = "127.0.0.1:8080"
DEPLOY_BACKEND = "127.0.0.1:9000"
DEPLOY_FRONT = "127.0.0.1:8000"

SIGNING_KEY_ID = "fronts1"
FORWARD_AUTH_PREFIX = "/_keygate/"
# The keys the forward-auth tests use, and the roles and own rate limit they have.
ALL_KEY = "front-all"
READER_KEY = "front-reader"
LIMITED_KEY = "front-limited"
READER_ROLES = ("1int-sessions-read",)
# One request an hour: the second is refused, and its Retry-After is far from zero.
ONE_AN_HOUR = {"requests": 1, "per": "hour", "burst": 1}

# The key-management path written every way a front proxy, keygate or a backend might read
# differently (the classic forward-auth bypasses: Authelia CVE-2021-32637, Istio-2021-005,
# oauth2-proxy GHSA-7rh7-c77v-6434). Each must be refused and never reach the backend.
PROTECTED_VARIANTS = (
    f"{REST}/apikeys",
    f"{REST}/apikeys/",
    f"{REST}/apikeys/1",
    f"{REST}/apikeys?x=1",
    f"{REST}//apikeys",  # `//`, merged by nginx's $uri
    "/1Integrate//rest/apikeys",
    "//1Integrate/rest/apikeys",
    f"{REST}%2Fapikeys",  # `%2F`, a slash to some readers
    f"{REST}%2fapikeys",
    f"{REST}/sessions/..;/apikeys",  # `..;/`, a parent segment to Tomcat
    f"{REST}/apikeys;jsessionid=x",  # path parameters
    f"{REST}/apikeys/1;jsessionid=x",
    "/1integrate/REST/ApiKeys",  # case
    f"{REST}/APIKEYS",
    f"{REST}/apikeys.",  # trailing dot
    f"{REST}/apikeys./1",
    f"{REST}/apikeys.json",  # suffix pattern match
    f"{REST}/sessions/%2e%2e/apikeys",  # encoded dot segment
    f"{REST}/sessions/%2E%2E/apikeys",
    f"{REST}/sessions/../apikeys",  # dot segments, resolved by nginx's $uri
    f"{REST}/./apikeys",
    f"{REST}%252Fapikeys",  # double encoding
    f"{REST}/%61pikeys",  # an encoded letter
    f"{REST}/apikeys%20",  # trailing whitespace
    f"{REST}\\apikeys",  # backslash
    f"http://127.0.0.1{REST}/apikeys",  # absolute form
)
# Identity headers a client might send to pose as someone (keygate's own and
# identity.strip_headers' defaults).
IDENTITY_SPOOFS = (
    "X-Acting-User",
    "X-Acting-User-Signature",
    "X-Keygate-Key-Id",
    "X-Keygate-Reason",
    "X-Forwarded-User",
    "X-Remote-User",
    "X-Auth-User",
    "X-User",
    "Remote-User",
    "X-Authenticated-User",
)
# Headers a client might send to make the decision read another target than it asked for.
TARGET_SPOOFS = ("X-Original-URI", "X-Original-URL", "X-Forwarded-Uri", "X-Rewrite-URL")


@dataclass
class Decider:
    """keygate deciding for a front proxy: the gateway, its config, keys and signing key."""

    gateway: RunningGateway
    config: Path
    secrets: dict[str, str]  # key name -> secret
    key_ids: dict[str, str]  # key name -> key id
    signing_key: bytes

    @property
    def port(self) -> int:
        """The proxy listener's port, where the decision endpoints are."""
        return self.gateway.proxy_port


@dataclass
class Front:
    """A running front proxy: which one, where clients reach it, how it says "rate limited"."""

    name: str
    port: int
    process: ManagedProcess
    rate_limited_status: int


def install_hint(tool: str) -> str:
    """The message a missing front proxy skips (or, under CI=true, fails) with."""
    return (
        f"the front-proxy tests need {tool}, which is not installed. Install it with "
        f"`sudo apt-get install -y {tool}` (Debian/Ubuntu; .ci/run does), then run pytest again"
    )


def find_nginx() -> str | None:
    """Return the nginx binary: PATH first, then /usr/sbin/nginx."""
    found = shutil.which("nginx")
    if found:
        return found
    return NGINX_FALLBACK if os.access(NGINX_FALLBACK, os.X_OK) else None


def find_caddy() -> str | None:
    """Return the caddy binary on PATH, or None."""
    return shutil.which("caddy")


def tool_or_skip(tool: str, found: str | None) -> str:
    """Return the binary; missing: skip with the install hint, or fail under CI=true."""
    if found is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {install_hint(tool)}", pytrace=False)
        pytest.skip(install_hint(tool))
    return found


def render(text: str, replacements: Mapping[str, str]) -> str:
    """Replace each deploy-file address with a test's; every one must be in the text."""
    for old, new in replacements.items():
        if old not in text:
            raise AssertionError(f"{old!r} is not in the deploy file any more")
        text = text.replace(old, new)
    return text


def nginx_main_conf(prefix: Path, site: Path) -> str:
    """Return an nginx.conf that runs in the foreground from `prefix` and includes `site`."""
    # As root, nginx's workers would run as nobody, who cannot enter pytest's 0700 temp dirs.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {name}_temp_path {prefix}/{name}_temp;\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}daemon off;\nmaster_process on;\nworker_processes 1;\n"
        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {prefix}/access.log;\n"
        "    default_type application/octet-stream;\n"
        f"{temp}"
        f"    include {site};\n"
        "}\n"
    )


def start_nginx(binary: str, directory: Path, site_text: str) -> ManagedProcess:
    """Write the site and a main conf under `directory`, check them, start nginx (no wait)."""
    prefix = directory.resolve()
    prefix.mkdir(parents=True, exist_ok=True)
    site = prefix / "site.conf"
    site.write_text(site_text, encoding="utf-8")
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_main_conf(prefix, site), encoding="utf-8")
    argv = [binary, "-p", f"{prefix}/", "-e", f"{prefix}/error.log", "-c", str(conf)]
    check = subprocess.run(
        [*argv, "-t", "-q"], capture_output=True, text=True, timeout=CHECK_TIMEOUT, check=False
    )
    if check.returncode != 0:
        raise AssertionError(f"nginx -t rejected {conf}:\n{check.stderr}")
    return ManagedProcess("nginx", argv, log_path=prefix / "stdout.log")


def caddy_env(directory: Path, addresses: Mapping[str, str]) -> dict[str, str]:
    """Environment for caddy: its home and config dirs in `directory`, plus the addresses."""
    home = str(directory.resolve())
    return {
        **os.environ,
        "HOME": home,
        "XDG_CONFIG_HOME": f"{home}/config",
        "XDG_DATA_HOME": f"{home}/data",
        **addresses,
    }


def start_caddy(binary: str, directory: Path, env: Mapping[str, str]) -> ManagedProcess:
    """Validate and start deploy/caddy/Caddyfile verbatim with `env` (no wait)."""
    directory.mkdir(parents=True, exist_ok=True)
    argv = [binary, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
    check = subprocess.run(
        [binary, "validate", "--config", str(CADDYFILE), "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
        env=dict(env),
        check=False,
    )
    if check.returncode != 0:
        raise AssertionError(f"caddy validate rejected {CADDYFILE}:\n{check.stderr}")
    return ManagedProcess("caddy", argv, log_path=directory / "caddy.log", env=env)


@contextlib.contextmanager
def stopped_after(process: ManagedProcess) -> Iterator[ManagedProcess]:
    """Stop the process's whole group afterwards, whatever happened."""
    try:
        yield process
    finally:
        process.stop()


async def wait_listening(process: ManagedProcess, port: int) -> None:
    """Wait until the front proxy accepts connections; its log in the failure."""
    try:
        await wait_for_port(port, START_TIMEOUT, process=process.popen)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{process.log_tail()}") from error
