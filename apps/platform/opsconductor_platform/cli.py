"""The `opsconductor` command."""

from __future__ import annotations

import asyncio
import getpass
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from opsconductor_core import __version__
from opsconductor_core.logging import configure_logging

app = typer.Typer(help="OpsConductor: IT automation platform.", no_args_is_help=True,
                  add_completion=False)
admin_app = typer.Typer(help="Administration without the API.", no_args_is_help=True)
keys_app = typer.Typer(help="Key management.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(keys_app, name="keys")


class RuntimeMode(StrEnum):
    embedded = "embedded"
    dapr = "dapr"


DataDir = Annotated[Path, typer.Option("--data-dir", envvar="OPSC_DATA_DIR",
                                       help="Databases, keys and the admin password file.")]


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the UI and API.")] = 8080,
    data_dir: DataDir = Path(".data"),
    runtime: Annotated[RuntimeMode, typer.Option(help="embedded: one process; dapr: sidecars.")]
    = RuntimeMode.embedded,
) -> None:
    """Start every service and serve the UI and API."""
    if runtime is RuntimeMode.dapr:
        typer.echo("Dapr mode is not available in this release yet; use --runtime embedded.",
                   err=True)
        raise typer.Exit(2)
    configure_logging(os.environ.get("OPSC_LOG_LEVEL", "INFO"))
    from opsconductor_platform.serve import serve_embedded

    asyncio.run(serve_embedded(host, port, data_dir))


@app.command()
def migrate(data_dir: DataDir = Path(".data")) -> None:
    """Apply every service's database migrations."""
    from opsconductor_db.migrations import upgrade
    from opsconductor_platform.hosting import HOSTED_APPS, prepare_data_dir

    prepare_data_dir(data_dir)
    for hosted in HOSTED_APPS:
        if hosted.has_database:
            upgrade(hosted.database_url(), hosted.migrations_dir)
            typer.echo(f"{hosted.app_id}: migrated")


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"opsconductor {__version__}")


@admin_app.command("create-user")
def create_user(
    username: str,
    role: Annotated[list[str], typer.Option("--role", help="Role name; repeat for more.")],
    email: Annotated[str | None, typer.Option()] = None,
    data_dir: DataDir = Path(".data"),
) -> None:
    """Create a user directly in the users database (password read from the terminal or
    OPSC_NEW_USER_PASSWORD, never from the command line)."""
    password = os.environ.get("OPSC_NEW_USER_PASSWORD") or getpass.getpass("Password: ")
    from opsconductor_platform.admin import create_user_offline

    user_id = asyncio.run(create_user_offline(data_dir, username, password, role, email))
    typer.echo(f"created user {username} ({user_id})")


@keys_app.command("rotate-jwt")
def rotate_jwt(data_dir: DataDir = Path(".data")) -> None:
    """Replace the token signing key; tokens signed with the old key stay valid until they
    expire."""
    from opsconductor_platform.hosting import rotate_signing_key

    typer.echo(f"new signing key {rotate_signing_key(data_dir)}")
