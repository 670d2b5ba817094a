"""The documentation is tested: its Python examples run as written."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path
from typing import Any

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"

# Pages whose ```python blocks run, top to bottom in one namespace per page, as a reader
# would paste them.  Functions named test_* that a page defines are then called (a page
# that shows how to write tests proves its tests pass).
RUN_PAGES = [
    "tutorial.md",
    "reference/wire-format.md",
    "reference/errors.md",
    "reference/api.md",
    "explanation/security.md",
    "how-to/replace-a-controllers-heartbeat-code.md",
    "how-to/rotate-keys.md",
    "how-to/use-zstd.md",
    "how-to/unit-test-payload-parsing.md",
]

_FENCE = re.compile(r"^(`{3,}|~{3,})(.*)$")
# A ```text block right after this line is the exact output of the python block before it.
OUTPUT_MARKER = "<!-- expected output -->"


def page_blocks(text: str) -> list[tuple[str, int, str]]:
    """Return the page's ```python blocks and marked output blocks, in order.

    Each item is ``(kind, first_line, text)`` with kind ``"python"`` or ``"output"``.
    """
    blocks: list[tuple[str, int, str]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, info = match.group(1), match.group(2).strip()
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != fence:
            end += 1
        body = "\n".join(lines[i + 1 : end]) + "\n"
        if info == "python":
            blocks.append(("python", i + 2, body))
        elif info == "text" and i > 0 and lines[i - 1].strip() == OUTPUT_MARKER:
            blocks.append(("output", i + 2, body))
        i = end + 1
    return blocks


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


def run_page(page: str) -> dict[str, Any]:
    """Execute every python block of ``page`` in one namespace; return it.

    A marked output block must equal what the python block before it printed.
    """
    path = DOCS / page
    namespace: dict[str, Any] = {"__name__": f"docs:{page}"}
    blocks = page_blocks(path.read_text(encoding="utf-8"))
    assert any(kind == "python" for kind, _, _ in blocks), f"{page} has no python block to run"
    printed = ""
    for kind, lineno, body in blocks:
        if kind == "output":
            assert printed == body, f"{page}:{lineno}: output differs"
            continue
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            # Pad so tracebacks point at the page's own line numbers.
            exec(compile("\n" * (lineno - 1) + body, str(path), "exec"), namespace)
        printed = out.getvalue()
    return namespace


@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_examples_run(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every python block of the page runs as written, and the tests it shows pass."""
    monkeypatch.chdir(tmp_path)
    namespace = run_page(page)
    shown = (DOCS / page).read_text(encoding="utf-8").count("\ndef test_")
    assert _call_tests(namespace) >= shown


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


def test_every_run_page_exists() -> None:
    """Each page listed to run exists (a renamed page cannot silently stop being tested)."""
    for page in RUN_PAGES:
        assert (DOCS / page).is_file(), page
