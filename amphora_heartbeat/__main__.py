"""The command line: ``python -m amphora_heartbeat`` (or ``amphora-heartbeat``).

Commands: ``listen``, ``send``, ``decode``, ``demo``, and those of other modules
registered in :data:`_PLUGINS` (``fleet``).  Every command that needs a key
takes ``--key K``, ``--key-file F`` or the ``AMPHORA_HEARTBEAT_KEY``
environment variable; prefer the last two, since other users can read argv.
This is the only module of the package that prints.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import importlib
import json
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from . import __version__
from .envelope import ZSTD_MAGIC, Codec, Digest, KeyRing, Unwrapper
from .errors import HeartbeatError
from .getter import UDPStatusGetter
from .models import Heartbeat
from .sender import UDPStatusSender, format_address, parse_address

__all__ = ["build_parser", "load_key", "main"]

KEY_ENV = "AMPHORA_HEARTBEAT_KEY"

#: Commands defined in other modules: (name, module, help).  Each module has
#: ``add_arguments(parser)`` and ``run(args) -> int``; a module not installed
#: is left out.
_PLUGINS: tuple[tuple[str, str, str], ...] = (
    ("fleet", "amphora_heartbeat.fleet", "simulate a fleet of amphorae sending heartbeats"),
    ("manager", "amphora_heartbeat.manager", "run the health manager"),
)


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


# --- keys ------------------------------------------------------------------------------


def add_key_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--key`` and ``--key-file`` to ``parser``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--key",
        action="append",
        metavar="K",
        help=f"heartbeat key; repeat for a key ring (prefer --key-file or ${KEY_ENV})",
    )
    group.add_argument(
        "--key-file",
        metavar="F",
        help="file holding the key as UTF-8; one trailing newline is ignored; "
        "several lines make a key ring",
    )


def parse_keys(text: str) -> KeyRing:
    """Return the key (or key ring, one key a line) a key file or variable holds."""
    text = text[:-1] if text.endswith("\n") else text
    lines = text.split("\n")
    if any(not line for line in lines):
        raise CommandError("a key file (or variable) must not hold an empty key")
    return lines if len(lines) > 1 else lines[0]


def load_key(args: argparse.Namespace) -> KeyRing:
    """Return the key from ``--key``, ``--key-file`` or the environment, in that order."""
    if args.key:
        return list(args.key) if len(args.key) > 1 else str(args.key[0])
    if args.key_file is not None:
        try:
            with open(args.key_file, encoding="utf-8") as f:
                return parse_keys(f.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read key file {args.key_file}: {exc}") from None
    text = os.environ.get(KEY_ENV)
    if text is None:
        raise CommandError(f"a key is needed: --key-file F, ${KEY_ENV} or --key K")
    return parse_keys(text)


def _signing_key(key: KeyRing) -> str | bytes:
    return key if isinstance(key, (str, bytes)) else key[0]


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], bool]]:
    """Turn SIGINT and SIGTERM into a flag the caller's loop polls."""
    stopped = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: stopped
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- listen ----------------------------------------------------------------------------


def _summary(heartbeat: Heartbeat) -> str:
    def counted(statuses: Sequence[str]) -> str:
        if not statuses:
            return ""
        return " (" + ", ".join(f"{s} {n}" for s, n in Counter(statuses).most_common()) + ")"

    listeners = [lst.status for lst in heartbeat.listeners.values()]
    pools = [p.status or "-" for p in heartbeat.pools.values()]
    members = [m.raw for p in heartbeat.pools.values() for m in p.members.values()]
    return (
        f"{len(listeners)} listeners{counted(listeners)}, {len(pools)} pools{counted(pools)}, "
        f"{len(members)} members{counted(members)}"
    )


class _ListenGetter(UDPStatusGetter):
    """A getter that prints each rejection instead of logging it."""

    as_json = False

    def handle_rejection(self, error: HeartbeatError, srcaddr: str, *, now: float) -> None:
        if self.as_json:
            line = json.dumps(
                {
                    "event": "rejected",
                    "source": srcaddr,
                    "recv_time": now,
                    "reason": error.reason,
                    "detail": error.message,
                }
            )
        else:
            line = f"rejected from {srcaddr}: {error.reason}: {error.message!r}"
        print(line, flush=True)


def _run_listen(args: argparse.Namespace) -> int:
    key = load_key(args)
    ip, port = parse_address(args.bind)
    with _ListenGetter(key, ip, port, timeout=0.2) as getter, _stop_on_signals() as stopped:
        getter.as_json = args.json
        print(f"listening on {format_address(getter.address)}", flush=True)
        while not stopped():
            try:
                heartbeat, srcaddr = getter.dorecv()
            except (TimeoutError, HeartbeatError):
                continue
            if args.json:
                line = json.dumps(
                    {
                        "event": "heartbeat",
                        "source": srcaddr,
                        "recv_time": heartbeat.recv_time,
                        "amphora_id": heartbeat.amphora_id,
                        "seq": heartbeat.seq,
                        "version": heartbeat.version,
                        "message": heartbeat.to_dict(),
                    }
                )
            else:
                line = (
                    f"heartbeat from {srcaddr}: amphora {heartbeat.amphora_id} "
                    f"seq {heartbeat.seq} ver {heartbeat.version}: {_summary(heartbeat)}"
                )
            print(line, flush=True)
    return 0


# --- send ------------------------------------------------------------------------------


def _run_send(args: argparse.Namespace) -> int:
    key = _signing_key(load_key(args))
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        message = json.loads(text)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read a JSON message from {args.file}: {exc}") from None
    if not isinstance(message, dict):
        raise CommandError("the message must be a JSON object")
    try:
        Heartbeat.from_dict(message)
    except HeartbeatError as exc:
        print(f"warning: the receiver will refuse this message: {exc}", file=sys.stderr)
    with UDPStatusSender(
        key, [args.to], codec=Codec(args.codec), digest=Digest(args.digest)
    ) as sender:
        if not sender.dosend(message):
            print(f"error: could not send to {args.to}", file=sys.stderr)
            return 1
    print(f"sent heartbeat to {sender.controllers[0]} ({args.codec}, {args.digest} trailer)")
    return 0


# --- decode ----------------------------------------------------------------------------

_HEX_TEXT = re.compile(rb"[0-9a-fA-F\s]+")


def read_datagram(data: bytes) -> tuple[bytes, str]:
    """Return a captured datagram from raw bytes, hex or base64 text, and which it was."""
    if data[:1] == b"\x78" or data[:4] == ZSTD_MAGIC:
        return data, "raw"
    compact = b"".join(data.split())
    if compact and _HEX_TEXT.fullmatch(data) and len(compact) % 2 == 0:
        return bytes.fromhex(compact.decode("ascii")), "hex"
    try:
        return base64.b64decode(compact, validate=True), "base64"
    except (binascii.Error, ValueError):
        return data, "raw"


def _run_decode(args: argparse.Namespace) -> int:
    key = load_key(args)
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc}") from None
    datagram, form = read_datagram(data)
    try:
        unwrapped = Unwrapper(key).inspect(datagram)
    except HeartbeatError as exc:
        print(f"rejected ({form} input, {len(datagram)} bytes): {exc.reason}: {exc}")
        return 1
    keys = 1 if isinstance(key, (str, bytes)) else len(key)
    print(
        f"input: {form}, {len(datagram)} bytes; codec: {unwrapped.codec.value}; "
        f"trailer: {unwrapped.digest.value}; key: {unwrapped.key_index + 1} of {keys}"
    )
    print(json.dumps(unwrapped.message, indent=2, ensure_ascii=False))
    try:
        heartbeat = Heartbeat.from_dict(unwrapped.message)
    except HeartbeatError as exc:
        print(f"rejected: {exc.reason}: {exc}")
        return 1
    print(f"heartbeat: amphora {heartbeat.amphora_id} seq {heartbeat.seq} ver {heartbeat.version}")
    return 0


# --- demo ------------------------------------------------------------------------------
# A simulated fleet sending to the health manager on 127.0.0.1, which writes a SQLite
# file in a temporary folder (or --db); the table is read back from the database.


def _run_demo(args: argparse.Namespace) -> int:
    from .manager import run_demo  # noqa: PLC0415  (only the demo needs the manager)

    if args.amphorae < 1 or args.duration <= 0 or args.interval <= 0:
        raise CommandError("--amphorae, --duration and --interval must be positive")
    return run_demo(args)


# --- the parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every command (plugins included when installed)."""
    parser = argparse.ArgumentParser(
        prog="amphora-heartbeat",
        description="Receive, send, decode and simulate Octavia-compatible amphora heartbeats.",
        epilog=f"Keys: --key-file F or ${KEY_ENV} (argv is visible to other users).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = commands.add_parser(
        "listen",
        help="print every heartbeat and rejection arriving on an address",
        description="Bind, print 'listening on IP:PORT', then one line per heartbeat and "
        "per rejected datagram.  Stops on SIGINT or SIGTERM (exit 0).",
    )
    listen.add_argument(
        "--bind", default="127.0.0.1:5555", metavar="IP:PORT", help="default %(default)s"
    )
    listen.add_argument("--json", action="store_true", help="print JSON lines")
    add_key_arguments(listen)
    listen.set_defaults(func=_run_listen)

    send = commands.add_parser(
        "send",
        help="send one heartbeat read as JSON",
        description="Wrap one JSON heartbeat message and send it.  With a key ring, "
        "the first key signs.",
    )
    send.add_argument("--to", required=True, metavar="IP:PORT", help="controller address")
    send.add_argument("--codec", choices=[c.value for c in Codec], default="zlib")
    send.add_argument("--digest", choices=[d.value for d in Digest], default="hex")
    send.add_argument("file", metavar="FILE|-", help="the JSON message; - reads stdin")
    add_key_arguments(send)
    send.set_defaults(func=_run_send)

    decode = commands.add_parser(
        "decode",
        help="decode one captured datagram",
        description="Verify and decode one datagram (raw bytes, hex or base64 text); "
        "print the codec, trailer and key used and the message.  Exit 1 if refused.",
    )
    decode.add_argument("file", nargs="?", default="-", metavar="FILE|-", help="default stdin")
    add_key_arguments(decode)
    decode.set_defaults(func=_run_decode)

    demo = commands.add_parser(
        "demo",
        help="run a receiver and a simulated fleet, showing every status live",
        description="Run the health manager on 127.0.0.1 with a simulated fleet sending to "
        "it, and show each load balancer, listener, pool and member with the operating status "
        "the manager wrote to its database (a SQLite file in a temporary folder, or --db).  "
        "Some members go DOWN and come back; one amphora falls silent, goes stale and is "
        "failed over (simulated).  Live on a terminal, plain snapshots every second otherwise.",
    )
    demo.add_argument("--amphorae", type=int, default=3, metavar="N", help="default %(default)s")
    demo.add_argument(
        "--duration", type=float, default=20.0, metavar="S", help="seconds; default %(default)s"
    )
    demo.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="heartbeat interval of the simulated amphorae, seconds; default %(default)s",
    )
    demo.add_argument("--seed", type=int, default=1, help="default %(default)s")
    demo.add_argument(
        "--db",
        metavar="URL",
        help="database to write: sqlite:///PATH or postgresql://...; default a SQLite file "
        "in a temporary folder, removed at the end",
    )
    demo.set_defaults(func=_run_demo)

    for name, module_name, help_text in _PLUGINS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        doc = (module.__doc__ or help_text).strip().split("\n")[0]
        sub = commands.add_parser(name, help=help_text, description=doc)
        module.add_arguments(sub)
        sub.set_defaults(func=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
    except CommandError as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        print(f"{parser.prog} {args.command}: error: {exc}", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
