"""keygate as a benchmark contender: temp config and policy, keys via the CLI, `serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.nginx import BENCH_KEY_NAME, SMALL_PATH
from benchmarks.procs import (
    LOOPBACK,
    BenchError,
    ManagedProcess,
    wait_for_port,
    wait_for_status,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_ROLE = "bench"
KEY_HEADER = "X-API-Key"
FORWARD_AUTH_PREFIX = "/_keygate/"  # where deploy/nginx/keygate-forward-auth.conf asks
CLI_TIMEOUT_S = 60.0  # seconds one `python -m gateway ...` call may take
UPSTREAM_TIMEOUT_S = 60  # keygate's upstream timeout in the generated config, seconds
SEED_BUDGET_S = 900.0  # default seconds seed_keys may spend before giving up
SEED_PROBE_KEYS = 10  # keys timed before projecting the whole seeding time

POLICY_YAML = """\
roles:
  bench:
    description: benchmark
    allow: ["GET /1Integrate/rest/**"]
protected: ["/1Integrate/rest/apikeys/**"]
"""


def write_policy(directory: Path) -> Path:
    """Write policy.yaml (one role allowing GET under the REST base) into `directory`."""
    path = directory / "policy.yaml"
    path.write_text(POLICY_YAML, encoding="utf-8")
    return path


def write_config(
    directory: Path,
    filename: str,
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    redis_url: str | None = None,
    access_log: bool = False,
    forward_auth: bool = False,
    decision_port: int | None = None,
) -> Path:
    """Write a keygate config whose store (keygate.db) and policy sit next to it.

    With `redis_url`, rate limits are counted in that Redis (shared by the workers); with
    `access_log`, keygate writes its access line (text, its default) to its output; with
    `forward_auth`, its decision endpoints answer a front proxy on loopback (with
    `decision_port`, on the decision listener there too: forward_auth.listen).
    """
    path = directory / filename
    # Access lines are written at level info; warning keeps the run's output to problems.
    level = "info" if access_log else "warning"
    limits = "" if redis_url is None else f'rate_limits: {{redis_url: "{redis_url}"}}\n'
    if forward_auth:
        listen = ""
        if decision_port is not None:
            listen = f", listen: {{host: {LOOPBACK}, port: {decision_port}}}"
        limits += (
            f'forward_auth: {{prefix: "{FORWARD_AUTH_PREFIX}", '
            f"trusted_proxies: [{LOOPBACK}/32]{listen}}}\n"
        )
    path.write_text(
        limits
        + f"""\
listen: {{host: {LOOPBACK}, port: {listen_port}}}
admin: {{host: {LOOPBACK}, port: {admin_port}}}
upstream: {{url: "http://{LOOPBACK}:{upstream_port}", timeout: {UPSTREAM_TIMEOUT_S}}}
store: {{url: "sqlite:///keygate.db"}}
policy: policy.yaml
anonymous: passthrough
log: {{level: {level}, access_log: {str(access_log).lower()}}}
""",
        encoding="utf-8",
    )
    return path


def _env() -> dict[str, str]:
    """Return the environment for keygate children (unbuffered output for the logs)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def gateway_cli(
    args: list[str], *, python: str = sys.executable, cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway ARGS` once and return the finished process."""
    return subprocess.run(
        [python, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=CLI_TIMEOUT_S,
        check=False,
    )


def _tail(text: str, lines: int = 15) -> str:
    """Return the last lines of a process's output."""
    return "\n".join(text.strip().splitlines()[-lines:])


def check_cli(*, python: str = sys.executable, cwd: Path = REPO_ROOT) -> str | None:
    """Return why `python -m gateway --help` fails, or None when the CLI starts."""
    try:
        done = gateway_cli(["--help"], python=python, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`python -m gateway --help` could not run: {exc}"
    if done.returncode != 0:
        return (
            f"`python -m gateway --help` exited {done.returncode}:\n"
            f"{_tail(done.stderr or done.stdout)}"
        )
    return None


def _parse_json_object(text: str) -> dict[str, object]:
    """Return the JSON object the CLI printed, tolerating lines around it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            raise
        value = json.loads(text[start : end + 1])
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value


def init_store(config_path: Path, *, python: str = sys.executable, cwd: Path = REPO_ROOT) -> None:
    """Create the config's database with `keygate init` (other commands never create it)."""
    args = ["init", "--config", str(config_path)]
    try:
        done = gateway_cli(args, python=python, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`python -m gateway {' '.join(args)}` timed out") from exc
    if done.returncode != 0:
        raise BenchError(
            f"`python -m gateway {' '.join(args)}` exited {done.returncode}:\n"
            f"{_tail(done.stderr or done.stdout)}"
        )


def create_key(
    config_path: Path,
    name: str,
    role: str = BENCH_ROLE,
    *,
    python: str = sys.executable,
    cwd: Path = REPO_ROOT,
    rate_limit: str | None = None,
) -> str:
    """Create one key with `keys create --json` (its own rate limit, if given); its secret."""
    args = [
        "keys",
        "create",
        "--config",
        str(config_path),
        "--name",
        name,
        "--role",
        role,
        "--json",
        *(() if rate_limit is None else ("--rate-limit", rate_limit)),
    ]
    try:
        done = gateway_cli(args, python=python, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"`python -m gateway {' '.join(args)}` timed out") from exc
    if done.returncode != 0:
        raise BenchError(
            f"`python -m gateway {' '.join(args)}` exited {done.returncode}:\n"
            f"{_tail(done.stderr or done.stdout)}"
        )
    try:
        secret = _parse_json_object(done.stdout)["secret"]
    except (ValueError, KeyError) as exc:
        raise BenchError(
            f"`keys create --json` printed no JSON with a secret ({exc}):\n{_tail(done.stdout)}"
        ) from exc
    if not isinstance(secret, str) or not secret:
        raise BenchError(f"`keys create --json` printed an unusable secret: {secret!r}")
    return secret


# --- Seeding: one bulk transaction straight into the store's schema. --------------------------


def seed_keys(config_path: Path, count: int, **_ignored: object) -> None:
    """Create `count` filler keys (seed-0000000, ...) in the store next to the config."""
    if count <= 0:
        return
    from benchmarks.seed import seed_store

    seconds = seed_store(config_path.parent / "keygate.db", count, ("bench",))
    print(f"    seeded {count} keys in {seconds:.1f} s", flush=True)


def prepare_gateway(
    directory: Path,
    *,
    listen_port: int,
    admin_port: int,
    upstream_port: int,
    keys: int,
    access_log: bool,
    decision_port: int | None = None,
) -> tuple[Path, str]:
    """Write policy and config, create the store, the bench key and `keys - 1` filler keys.

    Returns the config's path and the bench key's secret.
    """
    write_policy(directory)
    config = write_config(
        directory,
        "gateway.yaml",
        listen_port=listen_port,
        admin_port=admin_port,
        upstream_port=upstream_port,
        access_log=access_log,
        forward_auth=decision_port is not None,
        decision_port=decision_port,
    )
    init_store(config)
    key = create_key(config, BENCH_KEY_NAME)
    seed_keys(config, keys - 1)
    return config, key


# ----------------------------------------------------------------------------------------------


def start_keygate(
    config_path: Path,
    workers: int,
    *,
    listen_port: int,
    key: str,
    log_path: Path,
    startup_timeout_s: float,
    python: str = sys.executable,
    cwd: Path = REPO_ROOT,
) -> ManagedProcess:
    """Start `gateway serve`; return once the port accepts and a keyed GET returns 200."""
    argv = [python, "-m", "gateway", "serve", "--config", str(config_path)]
    argv += ["--workers", str(workers)]
    process = ManagedProcess(f"keygate w{workers}", argv, log_path=log_path, cwd=cwd, env=_env())
    try:
        deadline = time.monotonic() + startup_timeout_s
        wait_for_port(listen_port, startup_timeout_s, process)
        remaining = max(1.0, deadline - time.monotonic())
        wait_for_status(listen_port, SMALL_PATH, {KEY_HEADER: key}, 200, remaining, process)
    except BaseException:
        process.stop()
        raise
    return process
