"""The README documents every command and every config key (sqlite-utils' test_docs idea)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import click
import pytest

from dedupd import config
from dedupd.cli import dedupctl, dedupd

README = (Path(__file__).parent.parent / "README.md").read_text()


def _commands() -> list[tuple[str, click.Command]]:
    """Every command, sub-commands of groups included, by its full name."""
    found = []

    def visit(prefix: str, group: click.Group) -> None:
        for name, command in group.commands.items():
            found.append((f"{prefix} {name}", command))
            if isinstance(command, click.Group):
                visit(f"{prefix} {name}", command)

    visit("dedupd", dedupd)  # type: ignore[arg-type]
    visit("dedupctl", dedupctl)  # type: ignore[arg-type]
    return found


@pytest.mark.parametrize(("name", "command"), _commands(), ids=lambda v: str(v))
def test_every_command_has_help_and_is_in_the_readme(name: str, command: click.Command) -> None:
    assert command.help and len(command.help) > 20, f"{name} needs help text"
    assert f"`{name}" in README, f"README does not document `{name}`"
    for param in command.params:
        if isinstance(param, click.Option):
            assert param.help, f"{name} {param.opts[0]} needs help text"
            assert any(opt in README for opt in param.opts), f"README lacks {name} {param.opts}"


SECTIONS = {
    "hashing": config.HashingConfig,
    "index": config.IndexConfig,
    "watch": config.WatchConfig,
    "quarantine": config.QuarantineConfig,
    "policies.NAME": config.Policy,
    "roots[]": config.Root,
}


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_config_key_is_in_the_readme_reference(section: str) -> None:
    reference = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    for f in fields(SECTIONS[section]):
        assert re.search(rf"`{re.escape(section)}\.{f.name}`", reference), f"{section}.{f.name}"


def test_top_level_config_keys_are_in_the_readme_reference() -> None:
    reference = README.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    for f in fields(config.Config):
        if f.name not in ("source", *(s.split(".")[0].split("[")[0] for s in SECTIONS)):
            assert f"`{f.name}`" in reference, f.name
