"""nginx for the benchmark: the upstream backend (the ceiling) and the keygate-equivalent peer."""

from __future__ import annotations

import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from benchmarks.procs import LOOPBACK, BenchError, ManagedProcess, wait_for_port

NGINX_FALLBACK = "/usr/sbin/nginx"
# The forward-auth example the README tells operators to copy; the contender runs it as is,
# with the benchmark's ports in place of the addresses it names.
FORWARD_AUTH_CONF = Path(__file__).resolve().parents[1] / "deploy/nginx/keygate-forward-auth.conf"
FORWARD_AUTH_ADDRESSES = {
    "keygate": "127.0.0.1:8080",
    "backend": "127.0.0.1:9000",
    "front": "127.0.0.1:8000",
}
# The forward-auth nginx's access line: the peer's, with the acting user keygate named.

SMALL_PATH = "/1Integrate/rest/small"
BIG_PATH = "/1Integrate/rest/big"
WHOAMI_PATH = "/1Integrate/rest/_whoami"  # echoes the X-Acting-User header the upstream got
APIKEYS_PATH = "/1Integrate/rest/apikeys/x"  # a protected path: 403 for every key caller
# A ~100-byte JSON document, served by `return` (no disk I/O).
SMALL_BODY = (
    '{"id":42,"name":"benchmark-session","status":"FINISHED",'
    '"createdBy":"bench","results":[1,2,3,4,5]}'
)
BIG_SIZE = 1024 * 1024  # bytes of the static "big" document
BENCH_KEY_NAME = "bench"  # name of the key the load generator sends
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
KEY_RANDOM_CHARS = 36  # base62 characters after "kg_", the same length as keygate's keys

# Connection reuse limits, generous on purpose so no contender pays for reconnects.
KEEPALIVE_REQUESTS = 1_000_000  # requests per keep-alive connection
KEEPALIVE_TIMEOUT_S = 75  # seconds an idle keep-alive connection is kept
UPSTREAM_KEEPALIVE = 64  # idle upstream connections cached per peer worker
WORKER_CONNECTIONS = 4096  # per nginx worker

# The peer's access line when logging is on: what keygate's line holds (peer, request line,
# status, bytes, time, request id, key name), buffered as an operator would configure it.
ACCESS_LOG_FORMAT = (
    '\'$remote_addr "$request" $status $body_bytes_sent $request_time '
    "rid=$request_id key=$kg_user'"
)
ACCESS_LOG_BUFFER = "64k"  # bytes nginx gathers before writing the access log
ACCESS_LOG_FLUSH = "1s"  # longest a buffered line waits
ACCESS_LOG_NAME = "access.log"

FORWARD_AUTH_LOG_FORMAT = ACCESS_LOG_FORMAT.replace("$kg_user", "$keygate_user")

JSON_401 = '{"error":"key_unknown","message":"missing or unknown API key"}'
JSON_403 = '{"error":"forbidden","message":"API-key management is not available to keys"}'


def find_nginx() -> str | None:
    """Return the nginx binary: PATH first, then /usr/sbin/nginx (often not on a user's PATH)."""
    found = shutil.which("nginx")
    if found:
        return found
    if os.access(NGINX_FALLBACK, os.X_OK):
        return NGINX_FALLBACK
    return None


def nginx_version(binary: str) -> str:
    """Return nginx's version line (nginx prints it on stderr)."""
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    text = (done.stderr or done.stdout).strip()
    return text.removeprefix("nginx version: ") or "unknown"


def generate_key() -> str:
    """Return a random key shaped like keygate's: "kg_" + 36 base62 characters."""
    return "kg_" + "".join(secrets.choice(_BASE62) for _ in range(KEY_RANDOM_CHARS))


def generate_keys(count: int) -> tuple[str, dict[str, str]]:
    """Return the bench key and a key -> name table of `count` keys including it."""
    bench_key = generate_key()
    table = {bench_key: BENCH_KEY_NAME}
    while len(table) < count:
        table[generate_key()] = f"seed-{len(table):05d}"
    return bench_key, table


def write_big_file(path: Path) -> None:
    """Write a JSON document of exactly BIG_SIZE bytes (deterministic filler text)."""
    head, tail = '{"data":"', '"}\n'
    filler_size = BIG_SIZE - len(head) - len(tail)
    rng = random.Random(0)
    filler = "".join(rng.choices(_BASE62, k=filler_size))
    path.write_text(head + filler + tail, encoding="ascii")


def _prefix_dir(root: Path, name: str) -> Path:
    """Create nginx's own prefix dir, readable by an unprivileged worker when run as root."""
    prefix = root / name
    prefix.mkdir(parents=True, exist_ok=True)
    # mkdtemp makes 0700 dirs; a root master's worker runs as "nobody" and must read files.
    for directory in (root, prefix):
        directory.chmod(0o755)
    return prefix


def _main_block(prefix: Path, workers: int) -> str:
    """Return the top of an nginx.conf: foreground master, worker count, logs and pid in prefix."""
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {WORKER_CONNECTIONS}; }}
"""


def _http_common(prefix: Path) -> str:
    """Return http-level settings shared by both nginx instances (temp paths in the prefix)."""
    return f"""\
    access_log off;
    default_type application/json;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout {KEEPALIVE_TIMEOUT_S}s;
    keepalive_requests {KEEPALIVE_REQUESTS};
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
"""


def upstream_conf(prefix: Path, port: int) -> str:
    """Return the upstream's nginx.conf: small JSON, 1 MiB file, and the X-Acting-User echo."""
    www = prefix / "www"
    return _one_server_conf(
        prefix,
        port,
        f"""\
        location = {SMALL_PATH} {{ return 200 '{SMALL_BODY}'; }}
        location = {BIG_PATH} {{ alias {www}/big.json; }}
        location = {WHOAMI_PATH} {{
            default_type text/plain;
            return 200 "$http_x_acting_user";
        }}
        location / {{ return 404 '{{"error":"not_found"}}'; }}
""",
    )


def _one_server_conf(prefix: Path, port: int, locations: str) -> str:
    """Return nginx.conf for one worker serving `locations` on `port` (no access log)."""
    return (
        _main_block(prefix, 1)
        + "http {\n"
        + _http_common(prefix)
        + f"""\
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
{locations}    }}
}}
"""
    )


def peer_conf(
    prefix: Path, port: int, upstream_port: int, workers: int, *, access_log: bool = False
) -> str:
    """Return the peer's nginx.conf: keygate's job (key map, 401, 403, acting user) in nginx.

    With `access_log`, every request is logged to prefix/access.log through a buffer.
    """
    # log_format belongs to http; access_log to the server (overriding http's "off").
    log_format = f"    log_format kg {ACCESS_LOG_FORMAT};\n" if access_log else ""
    server_log = (
        f"        access_log {prefix}/{ACCESS_LOG_NAME} kg buffer={ACCESS_LOG_BUFFER} "
        f"flush={ACCESS_LOG_FLUSH};\n"
        if access_log
        else ""
    )
    return (
        _main_block(prefix, workers)
        + "http {\n"
        + _http_common(prefix)
        + log_format
        + f"""\
    # ~40-byte keys, 10k+ entries: bigger hash than the defaults allow.
    map_hash_bucket_size 128;
    map_hash_max_size 262144;
    map $http_x_api_key $kg_user {{
        default "";
        include {prefix}/keys.map;
    }}
    upstream kg_backend {{
        server {LOOPBACK}:{upstream_port};
        keepalive {UPSTREAM_KEEPALIVE};
        keepalive_requests {KEEPALIVE_REQUESTS};
        keepalive_timeout {KEEPALIVE_TIMEOUT_S}s;
    }}
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
{server_log}        # Unknown or missing key: 401 before any location (keygate: authenticate first).
        if ($kg_user = "") {{ return 401 '{JSON_401}'; }}
        location ^~ /1Integrate/rest/apikeys/ {{ return 403 '{JSON_403}'; }}
        location / {{
            proxy_pass http://kg_backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-API-Key "";
            proxy_set_header X-Acting-User $kg_user;
            proxy_set_header X-Remote-User "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $host;
            # Stream through memory only: never spill a 1 MiB body to a temp file.
            proxy_buffers 16 64k;
            proxy_busy_buffers_size 128k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""
    )


def write_keys_map(path: Path, table: Mapping[str, str]) -> None:
    """Write the peer's `map` include: one `key name;` line per key."""
    path.write_text("".join(f"{key} {name};\n" for key, name in table.items()), encoding="ascii")


def _start(binary: str, prefix: Path, conf: str, name: str, port: int) -> ManagedProcess:
    """Write nginx.conf, test it with `nginx -t`, start the master and wait for the port."""
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf, encoding="ascii")
    argv = [binary, "-p", f"{prefix}/", "-c", str(conf_path)]
    test = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, timeout=60)
    if test.returncode != 0:
        raise BenchError(f"{name}: nginx -t rejected {conf_path}:\n{test.stderr.strip()}")
    process = ManagedProcess(name, argv, log_path=prefix / "stdout.log")
    try:
        wait_for_port(port, timeout_s=30, process=process)
    except BaseException:
        process.stop()
        raise
    return process


def start_upstream(binary: str, root: Path, port: int) -> ManagedProcess:
    """Start the upstream nginx (worker_processes 1) under root/upstream on `port`."""
    prefix = _prefix_dir(root, "upstream")
    (prefix / "www").mkdir(exist_ok=True)
    big = prefix / "www" / "big.json"
    if not big.exists():
        write_big_file(big)
        big.chmod(0o644)
    return _start(binary, prefix, upstream_conf(prefix, port), "upstream nginx", port)


def start_peer(
    binary: str,
    root: Path,
    port: int,
    upstream_port: int,
    table: Mapping[str, str],
    workers: int,
    *,
    access_log: bool = False,
) -> ManagedProcess:
    """Start the nginx peer under root/peer (root/peer-log with its access log) on `table`."""
    prefix = _prefix_dir(root, "peer-log" if access_log else "peer")
    keys_map = prefix / "keys.map"
    if not keys_map.exists():
        write_keys_map(keys_map, table)
        keys_map.chmod(0o644)
    conf = peer_conf(prefix, port, upstream_port, workers, access_log=access_log)
    return _start(binary, prefix, conf, "nginx peer", port)


def forward_auth_conf(
    prefix: Path, port: int, upstream_port: int, keygate_port: int, workers: int
) -> str:
    """Return nginx.conf for deploy/nginx/keygate-forward-auth.conf: auth_request to keygate.

    The site is the deploy file with this run's ports; every request is access-logged
    (buffered, as the peer's log) with the acting user keygate answered.
    """
    site = FORWARD_AUTH_CONF.read_text(encoding="utf-8")
    ports = {"keygate": keygate_port, "backend": upstream_port, "front": port}
    for name, address in FORWARD_AUTH_ADDRESSES.items():
        if address not in site:
            raise BenchError(f"{FORWARD_AUTH_CONF} no longer names {address} ({name})")
        site = site.replace(address, f"{LOOPBACK}:{ports[name]}")
    (prefix / "site.conf").write_text(site, encoding="utf-8")
    logging = (
        f"    log_format kgfa {FORWARD_AUTH_LOG_FORMAT};\n"
        f"    access_log {prefix}/{ACCESS_LOG_NAME} kgfa buffer={ACCESS_LOG_BUFFER} "
        f"flush={ACCESS_LOG_FLUSH};\n"
    )
    common = _http_common(prefix).replace("    access_log off;\n", logging)
    return (
        _main_block(prefix, workers)
        + "http {\n"
        + common
        + f"    include {prefix}/site.conf;\n}}\n"
    )


def stub_decider_conf(prefix: Path, port: int, acting_user: str) -> str:
    """Return nginx.conf for a decision service that costs next to nothing: every decision
    is 200 with `acting_user` (no key read, no log), so nginx's own auth_request cost shows."""
    return _one_server_conf(
        prefix,
        port,
        f"""\
        location / {{
            add_header X-Acting-User {acting_user};
            add_header Cache-Control no-store;
            return 200;
        }}
""",
    )


def start_stub_decider(binary: str, root: Path, port: int, acting_user: str) -> ManagedProcess:
    """Start the stub decision service (one nginx worker) under root/stub-decider on `port`."""
    prefix = _prefix_dir(root, "stub-decider")
    conf = stub_decider_conf(prefix, port, acting_user)
    return _start(binary, prefix, conf, "stub decider nginx", port)


def start_forward_auth(
    binary: str,
    root: Path,
    port: int,
    upstream_port: int,
    keygate_port: int,
    workers: int,
    name: str = "forward-auth",
) -> ManagedProcess:
    """Start nginx running the forward-auth example under root/`name` on `port`."""
    prefix = _prefix_dir(root, name)
    conf = forward_auth_conf(prefix, port, upstream_port, keygate_port, workers)
    return _start(binary, prefix, conf, "nginx forward-auth", port)
