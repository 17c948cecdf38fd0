"""The `hairfluencer` command.

Operations commands live here; development-only commands (`dev`, `try-on`) are
plugged in through the `hairfluencer.commands` entry-point group, so production
code never imports devstack/.
"""

from __future__ import annotations

import getpass
from importlib.metadata import entry_points

import click
from sqlalchemy.exc import SQLAlchemyError

from api.app import create_app
from api.contract import document_text
from shared.access.auth import issue_dev_token
from shared.core.config import ENV_VARS, get_settings
from shared.core.migrate import upgrade
from shared.privacy.audit_trail import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    READER,
    check_reader,
    parse_since,
    trail,
)
from shared.services import Services
from shared.storage.check import run_checks
from shared.storage.keys import InvalidKey, check_user_id
from shared.storage.setup import apply_steps
from shared.tryons.retirement import StillInCatalogue, retire_hairstyle


@click.group()
def main() -> None:
    """Hairfluencer backend."""


@main.command()
def migrate() -> None:
    """Apply database migrations (Alembic) up to the newest."""
    upgrade(get_settings().database_url)
    click.echo("database is at the newest migration")


@main.command("setup-storage")
@click.option("--create/--no-create", default=True, help="Create missing buckets.")
def setup_storage(create: bool) -> None:
    """Create/harden the buckets: private, encrypted, TLS-only, CORS, lifecycle. Exits
    1 when a bucket is missing or the credentials are refused (a release must fail);
    a feature the provider lacks is reported and the rest goes on."""
    fatal = 0
    for step in apply_steps(get_settings(), create=create):
        click.echo(step.line)
        fatal += step.fatal
    if fatal:
        click.echo(f"{fatal} step(s) failed: the bucket names or the credentials are wrong",
                   err=True)
        raise SystemExit(1)


@main.group()
def storage() -> None:
    """Object storage (S3 or an S3-compatible provider)."""


@storage.command("check")
def storage_check() -> None:
    """Self-test the configured provider for both buckets: one PASS/FAIL/SKIP line per
    item, each failure with its fix; exit code 1 on any failure. Writes only under
    `_storage-check/` and deletes what it wrote."""
    results = run_checks(get_settings())
    for result in results:
        click.echo(result.line())
    failed = sum(not result.ok for result in results)
    click.echo(f"{len(results)} items, {failed} failed")
    if failed:
        raise SystemExit(1)


@main.command()
@click.argument("user_id")
@click.option("--ttl", default=7 * 24 * 3600, show_default=True, help="Lifetime in seconds.")
def token(user_id: str, ttl: int) -> None:
    """Print a development token for USER_ID (HS256; refused in production)."""
    settings = get_settings()
    if settings.is_production:
        raise click.ClickException("development tokens are refused in production")
    click.echo(issue_dev_token(settings, user_id, ttl))


@main.command()
def openapi() -> None:
    """Print the OpenAPI document (regenerate docs/openapi.json with
    `hairfluencer openapi > docs/openapi.json`)."""
    click.echo(document_text(create_app(configure_logs=False)), nl=False)


@main.command("retire-hairstyle")
@click.argument("style_id")
def retire_hairstyle_command(style_id: str) -> None:
    """Fail STYLE_ID's queued try-ons now (tryon.hairstyle_retired). Remove the style
    from the catalogue and deploy first; jobs already at fal run to their end."""
    svc = Services.from_settings(get_settings())
    try:
        failed = retire_hairstyle(svc, style_id)
    except StillInCatalogue:
        raise click.ClickException(
            f"{style_id} is still in this catalogue: remove it and deploy first") from None
    finally:
        svc.engine.dispose()
    click.echo(f"{style_id}: {failed} queued try-ons failed with tryon.hairstyle_retired")


def _user_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_user_id(value)
    except InvalidKey as exc:
        raise click.BadParameter(str(exc)) from None


def _operator(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str:
    if value is not None:
        try:
            return check_reader(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    try:
        name = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry and no $USER
        return "unknown"
    return name if READER.fullmatch(name) else "unknown"


@main.command("audit")
@click.option("--user", "user_id", required=True, callback=_user_id, help="The user id.")
@click.option("--since", help="From 2026-12-01, 2026-12-01T10:00:00Z (UTC unless an offset "
              "is given), or an age: 30m, 24h, 7d. Default: the whole trail.")
@click.option("--limit", type=click.IntRange(1, MAX_LIMIT), default=DEFAULT_LIMIT,
              show_default=True, help="Show at most the newest LIMIT events.")
@click.option("--operator", callback=_operator,
              help="Who is reading, recorded in the audit.read event. Default: the OS user.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit_command(user_id: str, since: str | None, limit: int, operator: str,
                  as_json: bool) -> None:
    """Print a user's audit trail, oldest first (ids and codes; no URL or token).
    The read itself is recorded as an `audit.read` event of that user."""
    svc = Services.from_settings(get_settings())
    try:
        try:
            start = parse_since(since, svc.clock()) if since is not None else None
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--since'") from None
        read = trail(svc, user_id, reader=operator, since=start, limit=limit)
    except SQLAlchemyError as exc:
        # The class only: a driver message may quote the connection string.
        raise click.ClickException(
            f"cannot read the audit trail: database error ({type(exc).__name__})") from None
    finally:
        svc.engine.dispose()
    for event in read.events:
        click.echo(event.to_json() if as_json else event.line())
    if read.truncated:
        click.echo(f"only the newest {limit} events are shown: older ones in the window were "
                   f"left out (raise --limit, up to {MAX_LIMIT})", err=True)
    click.echo(f"{len(read.events)} events of {user_id}; this read is recorded as audit.read "
               f"by {operator}", err=True)


@main.command("env-table")
def env_table() -> None:
    """Print the environment-variable table (Markdown) for the README."""
    click.echo("| variable | default | meaning |\n| --- | --- | --- |")
    for name, default, doc in ENV_VARS:
        shown = default if len(default) < 40 else "(see meaning)"
        click.echo(f"| `{name}` | `{shown}` | {doc} |")


for _ep in entry_points(group="hairfluencer.commands"):
    try:
        main.add_command(_ep.load(), _ep.name)
    except ImportError:
        # A production install without the devstack package: no dev commands.
        continue
