"""Gateway config: `gateway.yaml` as typed models, loaded with every problem at once.

models.py declares the file (one Struct per section, the one table of defaults),
loading.py checks parsed YAML against them with each problem's line, checks.py holds the
cross-field rules, secrets.py the one reader of every `{env|file}` secret.

May import: problems, store.urls (URL rules), proxy.hygiene (one header classifier; the one
exemption in pyproject's import contracts). Imports no aiohttp.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.settings.checks import is_header_name, module_installed
from gateway.settings.loading import (
    ConfigError,
    SecretsNeeded,
    load_settings,
    settings_from_data,
)
from gateway.settings.models import (
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_HANG_TIMEOUT,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_STRIP_HEADERS,
    AdminListener,
    BackendSignIn,
    ClientLimits,
    ExpirySettings,
    Feed,
    ForwardAuth,
    GrantsMapping,
    Identity,
    Listener,
    Log,
    NotifySettings,
    OidcSignIn,
    RateLimits,
    SessionSettings,
    Settings,
    Shutdown,
    SigningKey,
    SignInSettings,
    Store,
    Supervisor,
    TokenCheck,
    TrustedHeaderSignIn,
    Upstream,
    UpstreamTLS,
    Usage,
    WebhookSettings,
)
from gateway.settings.secrets import read_secret_file


def config_path_from(argument: str | None) -> Path:
    """Return the config path: the argument, else $KEYGATE_CONFIG, else config/gateway.yaml."""
    if argument:
        return Path(argument)
    from_env = os.environ.get(CONFIG_ENV_VAR)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_HANG_TIMEOUT",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_STRIP_HEADERS",
    "AdminListener",
    "BackendSignIn",
    "ClientLimits",
    "ConfigError",
    "ExpirySettings",
    "Feed",
    "ForwardAuth",
    "GrantsMapping",
    "Identity",
    "Listener",
    "Log",
    "NotifySettings",
    "OidcSignIn",
    "RateLimits",
    "SecretsNeeded",
    "SessionSettings",
    "Settings",
    "Shutdown",
    "SignInSettings",
    "SigningKey",
    "Store",
    "Supervisor",
    "TokenCheck",
    "TrustedHeaderSignIn",
    "Upstream",
    "UpstreamTLS",
    "Usage",
    "WebhookSettings",
    "config_path_from",
    "is_header_name",
    "load_settings",
    "module_installed",
    "read_secret_file",
    "settings_from_data",
]
