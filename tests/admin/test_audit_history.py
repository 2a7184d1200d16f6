"""A key's history is by its id: every batch that touched it, every entry under an old name;
relative expiry texts are exact at small scales (the same rule as the page's, table-driven).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.config import init_store
from support.processes import PYTHON, REPO_ROOT, cli_env
from support.stores import new_key
from test_admin_api import KEYS, ROOT, WRITE, Client, expect

from gateway.keys import rules as key_rules
from gateway.store.base import KeyChanges, KeyStore

# (seconds until expiry, the text both the CLI and the page show): one rule, whole units
# rounded down, seconds under a minute, minutes under an hour, hours under a day.
EXPIRES_IN_CASES: list[tuple[float, str]] = [
    (0.4, "in 1 s"),
    (1, "in 1 s"),
    (34, "in 34 s"),
    (59.9, "in 59 s"),
    (60, "in 1 min"),
    (299, "in 4 min"),
    (300, "in 5 min"),
    (3_599, "in 59 min"),
    (3_600, "in 1 h"),
    (3 * 3_600 + 59 * 60, "in 3 h"),
    (86_399, "in 23 h"),
    (86_400, "in 1 day"),
    (2 * 86_400 + 5, "in 2 days"),
    (14 * 86_400, "in 14 days"),
]


@pytest.mark.parametrize(("seconds", "text"), EXPIRES_IN_CASES)
def test_expires_in_text_is_exact_at_small_scales(seconds: float, text: str) -> None:
    assert key_rules.expires_in_text(seconds) == text


async def history(store: KeyStore, key_id: int) -> list[str]:
    return [event.action for event in await store.list_audit(key_id=key_id)]


async def test_a_keys_history_by_id_holds_its_batches_and_its_old_names(
    backend_store: KeyStore,
) -> None:
    store = backend_store
    kept = await store.create_key(new_key("old-name"), "root")
    other = await store.create_key(new_key("other"), "root")
    await store.update_key(kept.id, KeyChanges(name="new-name"), "root")
    await store.revoke_all("root")
    await store.reinstate_all("root")
    await store.set_revoked(other.id, True, "root")
    await store.delete_revoked("root")
    assert await history(store, kept.id) == ["reinstate_all", "revoke_all", "edit", "create"]
    assert await history(store, other.id) == [
        "delete_revoked",
        "revoke",
        "reinstate_all",
        "revoke_all",
        "create",
    ]
    batches = [e for e in await store.list_audit() if e.action.endswith("_all")]
    assert all(isinstance(e.details["batch_id"], str) and e.details["batch_id"] for e in batches)
    assert len({e.details["batch_id"] for e in batches}) == len(batches)
    # Paging by id still walks the whole history, batches included.
    newest = await store.list_audit(key_id=kept.id, limit=2)
    rest = await store.list_audit(key_id=kept.id, before_id=newest[-1].id)
    assert [e.action for e in newest + rest] == await history(store, kept.id)


async def test_a_copied_store_keeps_batch_histories(
    backend_store: KeyStore, tmp_path: Path
) -> None:
    from gateway.store.sqlite import SqliteKeyStore

    row = await backend_store.create_key(new_key("copied"), "root")
    await backend_store.revoke_all("root")
    target = SqliteKeyStore(tmp_path / "copy" / "keygate.db")
    await target.open()
    try:
        await target.import_contents(await backend_store.export_contents(), replace=False)
        assert await history(target, row.id) == ["revoke_all", "create"]
    finally:
        await target.close()


async def test_the_api_history_of_a_key_by_id_or_current_name(client: Client) -> None:
    resp = await client.post(KEYS, json={"name": "first-name", "roles": ["reader"]}, headers=ROOT)
    key_id = (await expect(resp, 201))["key"]["id"]
    resp = await client.patch(f"{KEYS}/{key_id}", json={"name": "second-name"}, headers=WRITE)
    await expect(resp, 200)
    await expect(await client.post(f"{KEYS}/revoke-all", headers=WRITE), 200)
    expected = ["revoke_all", "edit", "create"]
    for params in (f"key_id={key_id}", "key_name=second-name"):
        body = await expect(await client.get(f"/api/v1/audit?{params}", headers=ROOT), 200)
        assert [item["action"] for item in body["items"]] == expected, params
    # A name no key has now still finds the entries written under it (a deleted key's).
    body = await expect(await client.get("/api/v1/audit?key_name=first-name", headers=ROOT), 200)
    assert [item["action"] for item in body["items"]] == ["create"]


@pytest.fixture
async def client(aiohttp_client: Any, tmp_path: Path) -> Any:
    from test_admin_api import make_app, make_runtime

    runtime = await make_runtime(tmp_path)
    try:
        yield await aiohttp_client(make_app(runtime))
    finally:
        await runtime.store.close()


def keygate(config: Path, *args: str) -> str:
    done = subprocess.run(
        [PYTHON, "-m", "gateway", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=cli_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_the_cli_history_of_a_key_resolves_its_name_and_shows_expiry_exactly(
    tmp_path: Path,
) -> None:
    (tmp_path / "policy.yaml").write_text("roles:\n  reader:\n    allow: ['GET /r/**']\n")
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "upstream: {url: 'http://127.0.0.1:9'}\nstore: {url: 'sqlite:///keygate.db'}\n"
        "policy: policy.yaml\n"
    )
    init_store(config)
    created = json.loads(
        keygate(config, "keys", "create", "--name", "before", "--role", "reader", "--json")
    )
    keygate(config, "keys", "edit", "before", "--name", "after")
    keygate(config, "keys", "revoke-all")
    events = json.loads(keygate(config, "audit", "--key", "after", "--json"))
    assert [e["action"] for e in events] == ["revoke_all", "edit", "create"]
    assert json.loads(keygate(config, "audit", "--key", str(created["id"]), "--json")) == events
    text = keygate(config, "audit", "--key", "after")
    assert "batch_id=" in text and "{" not in text  # details as k=v pairs, not JSON objects
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 2.5 * 3_600))
    keygate(config, "keys", "create", "--name", "soon", "--role", "reader", "--expires", soon)
    assert "(in 2 h)" in keygate(config, "keys", "list")
