"""Shared pieces of the command line: the error type, config and store opening, the actor."""

from __future__ import annotations

import argparse
import getpass
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.settings import Settings, config_path_from, load_settings
from gateway.store.base import KeyStore, StoreMissingError
from gateway.store.factory import store_for


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


def load_store_config(args: argparse.Namespace) -> Settings:
    """Load the settings for a command that only uses the store (and the policy file).

    Only the store's secrets must resolve: an unset webhook secret, upstream header or
    signing key (needed by `serve`, which names every one missing) stops no such command.
    """
    return load_settings(config_path_from(getattr(args, "config", None)), secrets="store")


def no_database(location: str, settings: Settings) -> CliError:
    """Return the one-line error for a missing store, saying how to create it."""
    return CliError(
        f"no database at {location}; create it with "
        f"'keygate init --config {settings.path}' (or start 'keygate serve')"
    )


@asynccontextmanager
async def open_store(settings: Settings) -> AsyncIterator[KeyStore]:
    """Open the configured store for one CLI command and close it afterwards.

    Never creates it: only `keygate init`, `serve` and `demo` do.
    """
    store = store_for(settings)
    try:
        await store.open(create=False)
    except StoreMissingError as error:
        raise no_database(error.location, settings) from None
    try:
        yield store
    finally:
        await store.close()


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """Add the --config option every store command takes."""
    parser.add_argument(
        "--config", help="config file (default: $KEYGATE_CONFIG, then config/gateway.yaml)"
    )
