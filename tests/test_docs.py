"""Docs that cannot rot: every CLI command and option, every RPC, every config key and every
module is named where a reader looks for it."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import click

from ragd.cli import main
from ragd.config import NOT_IN_FILE, Config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = README + "".join(p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md")))


def _commands(group: click.Group, prefix: str = "ragd") -> Iterator[tuple[str, click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from _commands(command, path)


def test_every_cli_command_and_option_is_documented() -> None:
    missing = []
    for path, command in _commands(main):
        words = path.split()[1:]
        # "ragd roots add" may be written "ragd roots add", or "roots add|rm|ls" in the usage list
        if f"ragd {' '.join(words)}" not in README and not (
            len(words) == 2 and re.search(rf"ragd {words[0]} [^\n]*\b{words[1]}\b", README)
        ):
            missing.append(path)
        for param in command.params:
            if isinstance(param, click.Option):
                for opt in param.opts:
                    if opt.startswith("--") and opt not in ("--help",) and opt not in DOCS:
                        missing.append(f"{path} {opt}")
    assert not missing, f"undocumented in README.md / docs/: {missing}"


def test_every_rpc_is_documented_in_the_api_page() -> None:
    proto = (ROOT / "proto" / "ragd" / "v1" / "ragd.proto").read_text(encoding="utf-8")
    api = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    rpcs = re.findall(r"^\s*rpc (\w+)\(", proto, flags=re.MULTILINE)
    assert len(rpcs) >= 10
    assert not [r for r in rpcs if f"`{r}" not in api], "RPCs missing from docs/api.md"


def _config_keys() -> Iterator[str]:
    for section in dataclasses.fields(Config):
        if section.name in NOT_IN_FILE:
            continue
        default = section.default if section.default is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            for key in dataclasses.fields(default):
                yield f"{section.name}.{key.name}"
        elif section.name == "roots":
            yield from ("roots.path", "roots.include", "roots.exclude")
        else:
            yield section.name


def test_every_config_key_is_in_the_example_file() -> None:
    example = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    sections: dict[str, str] = {}
    current = ""
    for line in example.splitlines():
        header = re.match(r"#?\s*\[\[?(\w+)\]\]?\s*$", line)
        if header:
            current = header.group(1)
            continue
        key = re.match(r"#?\s*(\w+)\s*=", line)
        if key:
            sections.setdefault(f"{current}.{key.group(1)}" if current else key.group(1), line)
    missing = [k for k in _config_keys() if k not in sections]
    assert not missing, f"config keys missing from config.example.toml: {missing}"


def test_the_module_map_names_every_module() -> None:
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    package = ROOT / "daemon" / "ragd"
    modules = [p.relative_to(package).as_posix() for p in sorted(package.rglob("*.py"))
               if p.name != "__init__.py" and "__pycache__" not in p.parts]
    named = [m for m in modules if m in architecture or Path(m).name in architecture]
    assert sorted(set(modules) - set(named)) == [], "modules missing from docs/architecture.md"
