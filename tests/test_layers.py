"""The package's layers, read from its own imports: dependencies point down only.

The layers, lowest first (docs/explanation/architecture.md):

* the pure core: no I/O, no clock, no randomness;
* the I/O shell: sockets and the clock, standard library only;
* ``store``: the database side;
* ``manager``: the health manager;
* ``bench`` and ``cli``: the benchmarks and the command line, which nothing imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import amphora_heartbeat

PACKAGE = Path(amphora_heartbeat.__file__).parent

PURE = {"errors", "envelope", "models", "parse", "rules", "stats", "tracker", "logs"}
SHELL = {"getter", "sender", "aio", "testing", "fleet", "options", "metrics"}
# What each layer may import from the package, besides itself.
ALLOWED: dict[str, set[str]] = {
    "pure": {"pure"},
    "shell": {"pure", "shell"},
    "store": {"pure", "shell", "store"},
    "manager": {"pure", "shell", "store", "manager"},
    "bench": {"pure", "shell", "store", "manager", "bench", "root"},
    "cli": {"pure", "shell", "store", "manager", "cli", "root"},
    "root": {"pure", "shell", "root"},
}
# Standard-library modules that mean I/O, a clock or randomness: not in the pure core.
IMPURE_STDLIB = {"socket", "select", "selectors", "time", "random", "os", "subprocess",
                 "sqlite3", "asyncio", "signal", "secrets"}  # fmt: skip


def layer(module: str) -> str:
    """Return the layer of a module named relative to the package (``manager.core``)."""
    top = module.split(".", maxsplit=1)[0]
    if top in {"", "__init__", "__main__"}:
        return "root" if top != "__main__" else "cli"
    if top in PURE:
        return "pure"
    if top in SHELL:
        return "shell"
    if top in {"store", "manager", "bench", "cli"}:
        return top
    raise AssertionError(f"module {module!r} belongs to no layer: add it to test_layers.py")


def modules() -> dict[str, Path]:
    """Return every module of the package by its name relative to the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path) -> list[tuple[str, int]]:
    """Return (module imported, line) for each import of ``path``, package-relative or absolute."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    if name == "__init__":
        base = []
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*anchor, *(node.module or "").split(".")]).strip(".")
                if node.module:
                    targets = [target]
                else:  # from . import x: x is a submodule, or a name the package holds
                    names = [f"{target}.{a.name}".strip(".") for a in node.names]
                    targets = [t if t in MODULES else target for t in names]
                found += [(t or "__init__", node.lineno) for t in targets]
            else:
                found.append(("std:" + (node.module or ""), node.lineno))
        elif isinstance(node, ast.Import):
            found += [("std:" + a.name, node.lineno) for a in node.names]
    return found


def _package_target(target: str) -> str | None:
    if target.startswith("std:amphora_heartbeat"):
        return target[len("std:amphora_heartbeat") :].lstrip(".") or "__init__"
    return None if target.startswith("std:") else target


MODULES = modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    """A module imports only from its own layer and the layers below it."""
    mine = layer(name)
    for target, line in imports(name, MODULES[name]):
        inside = _package_target(target)
        if inside is None:
            if mine == "pure":
                top = target[4:].split(".")[0]
                assert top not in IMPURE_STDLIB, f"{name}:{line} (pure core) imports {top}"
            continue
        theirs = layer(inside)
        assert theirs in ALLOWED[mine], f"{name}:{line} ({mine}) imports {inside} ({theirs})"


def test_the_layer_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The reader resolves relative imports, so a manager module importing cli is caught."""
    bad = tmp_path / "core.py"
    bad.write_text("from ..cli.common import CommandError\nimport socket\n", encoding="utf-8")
    found = imports("manager.core", bad)
    assert ("cli.common", 1) in found
    assert layer("cli.common") not in ALLOWED[layer("manager.core")]
    pure = tmp_path / "rules.py"
    pure.write_text("from .getter import UDPStatusGetter\nimport time\n", encoding="utf-8")
    found = imports("rules", pure)
    assert ("getter", 1) in found
    assert ("std:time", 2) in found
    assert layer("getter") not in ALLOWED["pure"]


def test_every_module_has_a_layer() -> None:
    """A new module must be placed in a layer (layer() refuses an unknown one)."""
    for name in MODULES:
        layer(name)
    with pytest.raises(AssertionError, match="no layer"):
        layer("newthing")
