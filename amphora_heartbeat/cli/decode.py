"""``decode``: verify and decode one captured datagram (raw bytes, hex or base64 text)."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys

from ..envelope import ZSTD_MAGIC, Unwrapper
from ..errors import HeartbeatError
from ..models import Heartbeat
from .common import CommandError, add_options, load_key

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "read_datagram", "run"]

HELP = "decode one captured datagram"
DESCRIPTION = (
    "Verify and decode one datagram (raw bytes, hex or base64 text); "
    "print the codec, trailer and key used and the message.  Exit 1 if refused."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``decode`` command's options to ``parser``."""
    parser.add_argument(
        "file", nargs="?", default="-", metavar="FILE|-", help="the datagram; default - (stdin)"
    )
    add_options(parser, "key")


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


def run(args: argparse.Namespace) -> int:
    """Run ``decode``: verify and print one captured datagram; return the exit status."""
    key = load_key(args)
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as f:
                data = f.read()
    except OSError as exc:
        raise CommandError(f"cannot read {args.file}: {exc}") from None
    if not data.strip():
        where = "stdin" if args.file == "-" else args.file
        raise CommandError(f"no input: {where} holds no datagram (raw bytes, hex or base64 text)")
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
