"""The fleet deployment files agree with the config they ship: ports, probes, mounted files."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.settings import Settings, load_settings

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def manifests() -> dict[str, dict[str, Any]]:
    """Every Kubernetes manifest under deploy/k8s by kind."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            found[document["kind"]] = document
    return found


def settings_from(directory: Path, files: dict[str, str], environ: dict[str, str]) -> Settings:
    """Write the mounted files into `directory` and load the config as keygate would."""
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return load_settings(directory / "gateway.yaml", environ)


def test_kubernetes_manifests_agree_with_the_config(tmp_path: Path) -> None:
    kinds = manifests()
    assert set(kinds) >= {"Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"}
    config_map, secret = kinds["ConfigMap"], kinds["Secret"]
    deployment = kinds["Deployment"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    url_ref = env["KEYGATE_STORE_URL"]["valueFrom"]["secretKeyRef"]
    assert url_ref["name"] == secret["metadata"]["name"]
    database_url = secret["stringData"][url_ref["key"]]

    mount = {m["name"]: m for m in container["volumeMounts"]}["config"]
    volume = {v["name"]: v for v in pod["spec"]["volumes"]}["config"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    mounted = {
        item["path"]: config_map["data"][item["key"]] for item in volume["configMap"]["items"]
    }
    assert env["KEYGATE_CONFIG"]["value"] == f"{mount['mountPath']}/gateway.yaml"
    settings = settings_from(tmp_path, mounted, {"KEYGATE_STORE_URL": database_url})
    assert settings.store.url == database_url
    assert settings.policy.name in mounted

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"proxy": settings.listen.port, "admin": settings.admin.port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in kinds["Service"]["spec"]["ports"]] == ["proxy"]
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown.grace_period


def test_compose_agrees_with_the_config(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"postgres", "backend", "keygate-1", "keygate-2", "lb"} <= set(services)
    keygate = services["keygate-1"]
    assert keygate == {**services["keygate-2"]}
    mounts = dict(volume.rsplit(":", 1)[0].split(":", 1)[::-1] for volume in keygate["volumes"])
    config_target = keygate["environment"]["KEYGATE_CONFIG"]
    files = {
        Path(target).name: (DEPLOY / source).read_text(encoding="utf-8")
        for target, source in mounts.items()
    }
    assert Path(config_target).parent.as_posix() == "/etc/keygate"
    assert set(mounts) == {config_target, "/etc/keygate/policy.yaml"}
    secret_file = tmp_path / "db_password"
    files["gateway.yaml"] = files["gateway.yaml"].replace(
        "/run/secrets/db_password", str(secret_file)
    )
    secret_file.write_text("pw\n", encoding="utf-8")
    settings = settings_from(tmp_path, files, {})
    assert settings.store.password == "pw"
    assert "/run/secrets/db_password" in mounts_text(mounts)
    assert keygate["secrets"] == ["db_password"] and "db_password" in compose["secrets"]

    store = urlsplit(settings.store.url)
    assert store.hostname == "postgres"
    assert services["postgres"]["environment"]["POSTGRES_DB"] == store.path.lstrip("/")
    assert services["postgres"]["environment"]["POSTGRES_USER"] == store.username
    upstream = urlsplit(settings.upstream.url)
    assert upstream.hostname == "backend"
    assert str(upstream.port) in services["backend"]["expose"]
    assert f"port={upstream.port}" in services["backend"]["command"][-1]
    assert str(settings.listen.port) in keygate["expose"]
    assert f"127.0.0.1:{settings.admin.port}/readyz" in keygate["healthcheck"]["test"][-1]

    nginx = (DEPLOY / "fleet" / "nginx.conf").read_text(encoding="utf-8")
    for name in ("keygate-1", "keygate-2"):
        assert f"server {name}:{settings.listen.port};" in nginx
    assert services["lb"]["ports"] == ["8080:8080"]
    assert "listen 8080;" in nginx


def mounts_text(mounts: dict[str, str]) -> str:
    """The fleet config's text (where the secret's path is named)."""
    return (DEPLOY / mounts["/etc/keygate/gateway.yaml"]).read_text(encoding="utf-8")


def test_the_compose_backend_command_imports_what_exists() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    command = compose["services"]["backend"]["command"]
    assert command[:2] == ["python", "-c"]
    imports = [n for n in ast.walk(ast.parse(command[2])) if isinstance(n, ast.ImportFrom)]
    assert imports
    for node in imports:
        module = importlib.import_module(node.module or "")
        for alias in node.names:
            assert hasattr(module, alias.name), (node.module, alias.name)
