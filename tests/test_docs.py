"""The README stays true: its settings table is ``Settings``, and every flag it names exists."""

from __future__ import annotations

import re
from pathlib import Path

import click
from typer.main import get_command

from agent.cli import app
from agent.settings_doc import END, START, markdown_table

README = Path(__file__).resolve().parents[1] / "README.md"
OTHER_TOOLS = {"--no-deps"}  # flags of pip, named where the README explains the set-up
# Flags of the benchmark scripts, whose commands the README quotes beside their figures.
BENCH_FLAGS = {
    flag
    for script in (Path(__file__).resolve().parent.parent / "bench").glob("*.py")
    for flag in re.findall(r"""add_argument\(\s*["'](--[a-z][a-z-]*)""", script.read_text())
}


def _commands() -> dict[str, click.Command]:
    """'locate' / 'eval run' / ... -> the click command, including the lazily mounted eval group."""
    root = get_command(app)
    ctx = click.Context(root)
    found: dict[str, click.Command] = {"": root}

    def walk(prefix: str, group) -> None:
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            found[f"{prefix}{name}"] = cmd
            if hasattr(cmd, "list_commands"):
                walk(f"{prefix}{name} ", cmd)

    walk("", root)
    return found


def _flags(cmd: click.Command) -> set[str]:
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")} | {"--help"}


def test_readme_settings_table_is_generated_from_settings():
    text = README.read_text()
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == markdown_table(), "run: python -m agent.settings_doc README.md"


def test_every_flag_the_readme_names_exists():
    commands = _commands()
    text = README.read_text()
    # Commands in code blocks: each flag must belong to that very command.
    lines = "\n".join(re.findall(r"```(?:bash)?\n(.*?)```", text, re.S)).replace("\\\n", " ").splitlines()
    checked = 0
    for line in lines:
        line = line.split("  #")[0]
        m = re.match(r"\s*geoagent((?: [a-z]+)*)", line)
        if not m:
            continue
        words = m.group(1).split()
        name = next((" ".join(words[:n]) for n in (2, 1, 0) if " ".join(words[:n]) in commands), "")
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]*", line):
            assert flag in _flags(commands[name]), f"README: `geoagent {name}` has no {flag}: {line.strip()}"
            checked += 1
    assert checked > 20
    # Flags named in the prose, or in a code line of ours (a bench script), exist on some command;
    # a code line of another tool (img2dataset, chroma, pip) is that tool's business.
    every = set().union(*(_flags(c) for c in commands.values())) | OTHER_TOOLS | BENCH_FLAGS
    prose = re.sub(r"```(?:bash)?\n.*?```", "", text, flags=re.S)
    ours = [line for line in lines if not re.match(r"\s*(?:img2dataset|chroma|pip|make)\b", line)]
    for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", "\n".join([prose, *ours]))):
        assert flag in every, f"README names {flag}, which no geoagent command or bench script has"


def test_readme_states_the_one_meaning_of_confidence():
    from agent.prediction import CONFIDENCE_MEANING

    meaning = CONFIDENCE_MEANING.split(" is ", 1)[1]  # "the share of the evidence ..."
    assert " ".join(meaning.split()) in " ".join(README.read_text().split())
