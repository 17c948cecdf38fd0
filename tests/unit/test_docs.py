"""The README's environment table is the one the code generates."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from api.cli import main

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_env_table_is_current():
    table = CliRunner().invoke(main, ["env-table"]).output
    text = README.read_text()
    start = text.index("<!-- env-table:start -->") + len("<!-- env-table:start -->")
    assert text[start:text.index("<!-- env-table:end -->")].strip() == table.strip()


def test_readme_starts_with_the_two_commands():
    first_block = README.read_text().split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line]
    assert commands == ["bash devstack/run", "bash devstack/test"]
