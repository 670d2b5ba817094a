"""``send``: wrap one heartbeat message read as JSON and send it."""

from __future__ import annotations

import argparse
import json
import sys

from ..envelope import Codec, Digest
from ..errors import HeartbeatError
from ..models import Heartbeat
from ..sender import UDPStatusSender
from .common import CommandError, add_options, load_key, signing_key

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "send one heartbeat read as JSON"
DESCRIPTION = "Wrap one JSON heartbeat message and send it.  With a key ring, the first key signs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``send`` command's options to ``parser``."""
    parser.add_argument("--to", required=True, metavar="IP:PORT", help="controller address")
    parser.add_argument(
        "--codec",
        choices=[c.value for c in Codec],
        default="zlib",
        help="compression; default %(default)s",
    )
    parser.add_argument(
        "--digest",
        choices=[d.value for d in Digest],
        default="hex",
        help="HMAC trailer form; default %(default)s",
    )
    parser.add_argument("file", metavar="FILE|-", help="the JSON message; - reads stdin")
    add_options(parser, "key")


def run(args: argparse.Namespace) -> int:
    """Run ``send``: wrap one JSON message and send it; return the exit status."""
    key = signing_key(load_key(args))
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
