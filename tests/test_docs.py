"""The documentation is tested: its Python examples run as written."""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _docs import DOCS, OUTPUT_MARKER, page_blocks, run_page

# Pages whose ```python blocks run, top to bottom in one namespace per page, as a reader
# would paste them (the README's too).  Functions named test_* that a page defines are
# then called (a page that shows how to write tests proves its tests pass).
RUN_PAGES = [
    "../README.md",
    "tutorial.md",
    "reference/wire-format.md",
    "reference/errors.md",
    "reference/api.md",
    "explanation/security.md",
    "how-to/replace-a-controllers-heartbeat-code.md",
    "how-to/rotate-keys.md",
    "how-to/use-zstd.md",
    "how-to/unit-test-payload-parsing.md",
    "how-to/receive-in-a-plain-loop.md",
    "how-to/receive-with-selectors.md",
    "how-to/receive-with-asyncio.md",
]
# Pages with python blocks that this module does not run, and why.
NOT_RUN = {
    "how-to/judge-heartbeats-in-a-loop.md": "run end to end by tests/test_example_loop.py",
    "explanation/rules.md": "run by tests/test_example_loop.py",
    "how-to/run-managers-on-postgresql.md": "needs a PostgreSQL server and a public bind",
}


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Return each fenced ```python block of a MyST page with its first line number."""
    return [(line, body) for kind, line, body in page_blocks(text) if kind == "python"]


def _call_tests(namespace: dict[str, Any]) -> int:
    called = 0
    for name, func in list(namespace.items()):
        if not (name.startswith("test_") and inspect.isfunction(func)):
            continue
        marks = [m for m in getattr(func, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            func()
            called += 1
            continue
        (mark,) = marks
        argname, values = mark.args
        for value in values:
            func(**{argname: value})
            called += 1
    return called


@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every python block of the page runs as written, and the tests it shows pass."""
    monkeypatch.chdir(tmp_path)
    namespace = run_page(page)
    shown = (DOCS / page).read_text(encoding="utf-8").count("\ndef test_")
    assert _call_tests(namespace) >= shown


def test_readme_examples_each_run_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each python block of the README is a whole program: it runs in a fresh namespace."""
    monkeypatch.chdir(tmp_path)
    readme = DOCS.parent / "README.md"
    blocks = python_blocks(readme.read_text(encoding="utf-8"))
    assert len(blocks) >= 4
    for lineno, body in blocks:
        code = compile("\n" * (lineno - 1) + body, str(readme), "exec")
        with contextlib.redirect_stdout(io.StringIO()):
            exec(code, {"__name__": "__main__"})


def test_fence_parser_finds_only_python_blocks() -> None:
    """The block extractor takes ```python fences and skips other languages and directives."""
    text = "\n".join(
        [
            "# Title",
            "```python",
            "a = 1",
            "```",
            "```text",
            "not code",
            "```",
            "````{note}",
            "```python",
            "b = 2",
            "```",
            "````",
        ]
    )
    assert python_blocks(text) == [(3, "a = 1\n")]


def test_output_blocks_are_checked() -> None:
    """A marked text block is the expected output; an unmarked one is prose."""
    text = "\n".join(
        ["```python", "print('hi')", "```", OUTPUT_MARKER, "```text", "hi", "```", "```text", "x"]
    )
    assert page_blocks(text) == [("python", 2, "print('hi')\n"), ("output", 6, "hi\n")]


def test_every_page_with_code_is_run_or_excused() -> None:
    """Each listed page exists, and every page with python blocks is run or says why not."""
    for page in [*RUN_PAGES, *NOT_RUN]:
        assert (DOCS / page).is_file(), page
    with_code = {
        path.relative_to(DOCS).as_posix()
        for path in DOCS.rglob("*.md")
        if "_build" not in path.parts and python_blocks(path.read_text(encoding="utf-8"))
    }
    assert with_code - set(RUN_PAGES) - set(NOT_RUN) == set()


# --- the command-line reference matches --help ---------------------------------------

CLI_PAGE = DOCS / "reference" / "cli.md"
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _help(*command: str) -> str:
    """Return ``python -m amphora_heartbeat [command] --help`` as a user sees it."""
    env = dict(os.environ, COLUMNS="100")
    result = subprocess.run(
        [sys.executable, "-m", "amphora_heartbeat", *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=DOCS.parent / "tests",
    )
    return result.stdout


@functools.cache
def _commands() -> tuple[str, ...]:
    """Return the subcommands the installed command line offers."""
    import argparse

    from amphora_heartbeat.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return tuple(sorted(action.choices))
    raise AssertionError("no subcommands")


def _sections(page: str) -> dict[str, str]:
    """Split the CLI page at headings; key each section by the command it names."""
    sections: dict[str, str] = {}
    current = ""
    for line in page.splitlines():
        if line.startswith("#"):
            words = re.findall(r"[a-z][a-z-]*", line.lower())
            current = next((w for w in words if w in _commands()), current)
        sections[current] = sections.get(current, "") + line + "\n"
    return sections


def test_cli_reference_matches_help() -> None:
    """Each command and option of --help is in the CLI page, and the page names no other."""
    page = CLI_PAGE.read_text(encoding="utf-8")
    sections = _sections(page)
    offered = set(_OPTION.findall(_help()))
    for command in _commands():
        assert command in sections, f"cli.md has no section for {command!r}"
        options = set(_OPTION.findall(_help(command))) - {"--help"}
        missing = options - set(_OPTION.findall(sections[command]))
        assert not missing, f"cli.md's {command!r} section lacks {sorted(missing)}"
        offered |= options
    unknown = set(_OPTION.findall(page)) - offered - {"--help"}
    assert not unknown, f"cli.md names options --help does not offer: {sorted(unknown)}"


def test_cli_reference_usage_blocks_are_current() -> None:
    """Every help text quoted in the CLI page (a block starting 'usage:') is the real one."""
    page = CLI_PAGE.read_text(encoding="utf-8")
    quoted = re.findall(r"^```(?:text|console)?\n(usage: .*?)^```$", page, re.M | re.S)
    for block in quoted:
        match = re.match(r"usage: amphora-heartbeat(?: (\w[\w-]*))?", block)
        assert match, block[:80]
        command = match.group(1)
        actual = _help(command) if command in _commands() else _help()
        assert block == actual, f"the quoted help of {command or 'the command'} is stale"


def test_tutorial_installs_from_the_repository() -> None:
    """The tutorial's install step works today: from the repository, not from a registry."""
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    first_sh = text.split("```sh\n", 1)[1].split("```", 1)[0]
    assert "pip install .\n" in first_sh
    assert "pip install amphora_heartbeat" not in first_sh
    assert (DOCS.parent / "pyproject.toml").is_file()
