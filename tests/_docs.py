"""Run a documentation page's examples: shared by the docs and worked-example tests."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"

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
