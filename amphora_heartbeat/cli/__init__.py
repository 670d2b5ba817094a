"""The command line: ``python -m amphora_heartbeat`` (or ``amphora-heartbeat``).

One module per command (:data:`COMMANDS`), each a thin layer over the library:
``listen``, ``send``, ``decode``, ``fleet``, ``manager``, ``demo``.  Every
command that needs a key takes ``--key K``, ``--key-file F`` or the
``AMPHORA_HEARTBEAT_KEY`` environment variable; prefer the last two, since other
users can read argv.  This package is the only part of the library that prints,
and no other part imports it.

Exit status: 0 done; 1 a runtime failure (an unreachable database, a port in
use, a missing optional package); 2 a usage error (a bad option value, a missing
key).  Either failure is one line on stderr, ``amphora-heartbeat COMMAND: error:
...``, never a traceback.  A reader of stdout that goes away early (``| head``)
ends the command quietly, with exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from .. import __version__
from ..store import StoreError
from . import decode, demo, fleet, listen, manager, send
from .common import KEY_ENV, CommandError

__all__ = ["COMMANDS", "build_parser", "main"]

#: The commands, by name, in the order ``--help`` lists them.
COMMANDS: dict[str, ModuleType] = {
    "listen": listen,
    "send": send,
    "decode": decode,
    "demo": demo,
    "fleet": fleet,
    "manager": manager,
}


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every command."""
    parser = argparse.ArgumentParser(
        prog="amphora-heartbeat",
        description="Receive, send, decode and simulate Octavia-compatible amphora heartbeats.",
        epilog=f"Keys: --key-file F or ${KEY_ENV} (argv is visible to other users).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = commands.add_parser(name, help=module.HELP, description=module.DESCRIPTION)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse printed
        return exc.code if isinstance(exc.code, int) else 2
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for commands that re-run
    try:
        status: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        return 1
    except KeyboardInterrupt:
        return 130
    except (CommandError, StoreError, ImportError, OSError, ValueError) as exc:
        print(f"{parser.prog} {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, CommandError) else 1
    return status


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())  # one line, whatever a driver's message holds
    return f"the database: {text}" if isinstance(exc, StoreError) else text


def _discard_stdout() -> None:
    # What CPython's documentation advises on SIGPIPE: point stdout at devnull so
    # that the flush at interpreter exit does not fail a second time.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
