"""The `opsconductor` command."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

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


class PubSubBroker(StrEnum):
    rabbitmq = "rabbitmq"
    redis = "redis"


@app.command()
def up(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port for the UI and API.")] = 8080,
    data_dir: DataDir = Path(".data"),
    runtime: Annotated[RuntimeMode, typer.Option(help="embedded: one process; dapr: sidecars.")]
    = RuntimeMode.embedded,
    pubsub: Annotated[PubSubBroker, typer.Option(
        help="Dapr mode: the broker behind the pub/sub component.")] = PubSubBroker.rabbitmq,
    postgres_url: Annotated[str, typer.Option(
        envvar="OPSC_POSTGRES_URL", help="Dapr mode: PostgreSQL server (one database per "
        "service, created when missing).")] = "postgresql://opsc:opsc@127.0.0.1:5432",
    rabbitmq_url: Annotated[str, typer.Option(
        envvar="OPSC_RABBITMQ_URL", help="Dapr mode: RabbitMQ (--pubsub rabbitmq).")]
    = "amqp://guest:guest@127.0.0.1:5672/",
    redis_url: Annotated[str, typer.Option(
        envvar="OPSC_REDIS_URL", help="Dapr mode: Redis (--pubsub redis).")]
    = "redis://127.0.0.1:6379/0",
    database_prefix: Annotated[str, typer.Option(
        envvar="OPSC_DATABASE_PREFIX", help="Dapr mode: database names are <prefix><app-id>.")]
    = "opsconductor_",
) -> None:
    """Start every service and serve the UI and API."""
    log_level = os.environ.get("OPSC_LOG_LEVEL", "INFO")
    configure_logging(log_level)
    if runtime is RuntimeMode.dapr:
        from opsconductor_platform.dapr_mode import DaprModeOptions, serve_dapr
        from opsconductor_platform.dapr_setup import PubSub, Servers

        options = DaprModeOptions(
            host=host, port=port, data_dir=data_dir, pubsub=PubSub(pubsub.value),
            servers=Servers(postgres_url=postgres_url, rabbitmq_url=rabbitmq_url,
                            redis_url=redis_url, database_prefix=database_prefix),
            log_level=log_level,
            sidecar_log_level=os.environ.get("OPSC_DAPR_LOG_LEVEL", "warn"))
        raise typer.Exit(asyncio.run(serve_dapr(options)))
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


@keys_app.command("rotate")
def rotate_credential_key(data_dir: DataDir = Path(".data")) -> None:
    """Add a new credential master key and make it the active one. A running platform re-wraps
    every credential's data key under it on its next health tick (every minute); the older keys
    stay in the keyring, so nothing stops opening meanwhile."""
    from opsconductor_platform.hosting import rotate_credential_master_key

    key_id, count = rotate_credential_master_key(data_dir)
    typer.echo(f"new credential master key {key_id} is active ({count} keys in the keyring); "
               "credentials are re-wrapped on the targets service's next tick")


targets_app = typer.Typer(help="Target inventory, through the running platform's API.",
                          no_args_is_help=True)
app.add_typer(targets_app, name="targets")


class InventoryFormat(StrEnum):
    ini = "ini"
    yaml = "yaml"
    csv = "csv"


@targets_app.command("import")
def import_targets(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="Ansible inventory (INI or YAML) or CSV.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change.")] = False,
    url: Annotated[str, typer.Option(help="The platform's address.")] = "http://127.0.0.1:8080",
    token: Annotated[str | None, typer.Option(envvar="OPSC_TOKEN", show_default=False,
                                              help="Access or API token (or OPSC_TOKEN).")] = None,
    file_format: Annotated[InventoryFormat | None, typer.Option(
        "--format", help="Default: from the file name, else detected.")] = None,
    default_user: Annotated[str | None, typer.Option(
        help="User name for hosts the file gives none.")] = None,
    batch: Annotated[int, typer.Option(min=1, max=5000, help="Targets per request.")] = 100,
) -> None:
    """Import targets; idempotent by name (re-running changes nothing). Secrets in the file are
    sent to the platform, encrypted there, and never printed."""
    if not token:
        typer.echo("Give a token with --token or OPSC_TOKEN.", err=True)
        raise typer.Exit(2)
    code = _run_import(file, url=url, token=token, dry_run=dry_run, batch=batch,
                       file_format=file_format.value if file_format else None,
                       default_user=default_user)
    raise typer.Exit(code)


# --- `targets import`: a dry run for the plan, then slices with a progress bar ----------------
# Each slice is one request and one transaction on the server; the plan is sorted by name, so
# re-running after an interruption finishes the rest (the import is idempotent).

SUFFIX_FORMATS = {".ini": "ini", ".cfg": "ini", ".yml": "yaml", ".yaml": "yaml", ".csv": "csv"}
CONTENT_TYPES = {"ini": "text/plain", "yaml": "application/yaml", "csv": "text/csv"}


class ImportFailed(Exception):
    pass


def _explain(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    lines = [f"{body.get('title', 'Error')} ({response.status_code}): {body.get('detail', '')}"]
    for where, message in (body.get("errors") or {}).items():
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def _post(client: httpx.Client, content: bytes, fmt: str | None,
          params: dict[str, Any]) -> dict[str, Any]:
    # Without a format the server detects one (and says which in its answer).
    query = {"format": fmt, **params} if fmt else params
    response = client.post("/api/v1/targets/import", content=content, params=query,
                           headers={"Content-Type": CONTENT_TYPES.get(fmt or "", "text/plain")})
    if response.status_code != 200:
        raise ImportFailed(_explain(response))
    result: dict[str, Any] = response.json()
    return result


def _table(title: str, items: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    table.add_column("target")
    table.add_column("action")
    table.add_column("changes")
    for item in items:
        table.add_row(item["name"], item["action"], ", ".join(item.get("changes") or []))
    return table


def _run_import(file: Path, *, url: str, token: str, dry_run: bool, batch: int,
                file_format: str | None, default_user: str | None) -> int:
    console = Console(stderr=False)
    fmt = file_format or SUFFIX_FORMATS.get(file.suffix.lower())
    content = file.read_bytes()
    params: dict[str, Any] = {"default_user": default_user} if default_user else {}
    headers = {"Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120.0) as client:
            plan = _post(client, content, fmt, {**params, "dry_run": "true"})
            for warning in plan.get("warnings") or []:
                console.print(f"[yellow]warning:[/yellow] {warning}")
            summary, fmt = plan["summary"], plan["format"]
            if dry_run:
                console.print(_table("Dry run: nothing was changed", plan["items"]))
                console.print(f"would create {summary['created']}, update {summary['updated']}, "
                              f"leave {summary['unchanged']} unchanged")
                return 0
            total = plan["total"]
            done = {"created": 0, "updated": 0, "unchanged": 0}
            columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("import", total=total)
                for offset in range(0, total, batch):
                    result = _post(client, content, fmt,
                                   {**params, "offset": offset, "limit": batch})
                    for key in done:
                        done[key] += result["summary"][key]
                    progress.advance(task, result["applied"])
    except ImportFailed as exc:
        console.print(f"[red]import failed[/red]\n{exc}")
        return 1
    except httpx.HTTPError as exc:
        console.print(f"[red]cannot reach {url}:[/red] {type(exc).__name__}")
        return 1
    console.print(f"created {done['created']}, updated {done['updated']}, "
                  f"unchanged {done['unchanged']} (of {total})")
    return 0


@app.command("run")
def run_job(
    job: Annotated[str, typer.Argument(help="The job's id or exact name.")],
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="A parameter value, name=value; repeat for more. Required secret "
        "parameters left out are asked for.")] = None,
    target_tag: Annotated[list[str] | None, typer.Option(
        "--target-tag", help="Run on the targets with every one of these tags instead of the "
        "job's own selection; repeat for more.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Show the live output until it ends.")] = False,
    url: Annotated[str, typer.Option(help="The platform's address.")] = "http://127.0.0.1:8080",
    username: Annotated[str | None, typer.Option(
        help="Log in as this user (password from OPSC_PASSWORD or a prompt); without it the "
        "token in OPSC_TOKEN is used.")] = None,
) -> None:
    """Start a job; prints the execution id. With --follow, shows each target's output and a
    progress line, and exits 0 only if the execution succeeded (1 otherwise, 2 on usage or
    authentication errors)."""
    from opsconductor_platform.follow import (
        USAGE,
        ApiSession,
        CliError,
        Display,
        Follower,
        parameter_values,
        resolve_job,
        start_run,
    )

    token = os.environ.get("OPSC_TOKEN")
    if not username and not token:
        typer.echo("Set OPSC_TOKEN to an access or API token, or give --username.", err=True)
        raise typer.Exit(USAGE)
    interactive = sys.stdin.isatty()

    def ask_secret(name: str) -> str:
        return getpass.getpass(f"{name} (secret): ")

    session = ApiSession(url, token=None if username else token)
    try:
        if username:
            password = os.environ.get("OPSC_PASSWORD")
            if password is None:
                if not interactive:
                    raise CliError("Set OPSC_PASSWORD (no terminal to ask for the password).",
                                   USAGE)
                password = getpass.getpass(f"Password for {username}: ")
            session.login(username, password)
        found = resolve_job(session, job)
        values = parameter_values(found, param or [], ask_secret if interactive else None)
        execution_id = start_run(session, str(found["id"]), values, target_tag or [])
        typer.echo(execution_id)
        if not follow:
            return
        display = Display(sys.stdout, sys.stderr, tty=sys.stderr.isatty())
        try:
            status = Follower(session, execution_id, display).run()
        except KeyboardInterrupt:
            typer.echo(f"\nstopped following; execution {execution_id} goes on", err=True)
            raise typer.Exit(130) from None
        typer.echo(f"execution {execution_id} {status}", err=True)
        if status != "succeeded":
            raise typer.Exit(1)
    except CliError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(exc.code) from None
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach {url}: {type(exc).__name__}", err=True)
        raise typer.Exit(1) from None
    finally:
        session.close()
