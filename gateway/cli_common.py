"""Shared pieces of the command line: the error type, config and store opening, the actor."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.settings import Settings, config_path_from, load_settings
from gateway.store.base import KeyStore
from gateway.store.factory import store_from_url


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def cli_actor() -> str:
    """Return the audit actor for CLI commands: `cli:<os user>`."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli:unknown"


def load_config(args: argparse.Namespace) -> Settings:
    """Load the settings named by --config, $KEYGATE_CONFIG or config/gateway.yaml."""
    return load_settings(config_path_from(getattr(args, "config", None)))


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[KeyStore]:
    """Open the configured store for one CLI command and close it afterwards."""
    store = store_from_url(settings.store_url, settings.base_dir)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add the --config option every store command takes."""
    parser.add_argument(
        "--config", help="config file (default: $KEYGATE_CONFIG, then config/gateway.yaml)"
    )
