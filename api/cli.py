"""The `hairfluencer` command.

Operations commands live here; development-only commands (`dev`, `try-on`) are
plugged in through the `hairfluencer.commands` entry-point group, so production
code never imports devstack/.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from api.app import create_app
from api.contract import document_text
from shared.access.auth import issue_dev_token
from shared.core.config import ENV_VARS, get_settings
from shared.core.migrate import upgrade
from shared.services import Services
from shared.storage.setup import apply
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
    """Create/harden the buckets: private, encrypted, TLS-only, CORS, lifecycle."""
    for line in apply(get_settings(), create=create):
        click.echo(line)


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
