"""``send``: wrap one heartbeat message read as JSON and send it."""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys

from ..envelope import Codec, Digest, wrap_envelope
from ..errors import HeartbeatError
from ..models import Heartbeat
from ..options import format_address, parse_address
from .common import CommandError, add_options, address, load_key, signing_key

__all__ = ["DESCRIPTION", "HELP", "add_arguments", "run"]

HELP = "send one heartbeat read as JSON"
DESCRIPTION = "Wrap one JSON heartbeat message and send it.  With a key ring, the first key signs."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``send`` command's options to ``parser``."""
    parser.add_argument(
        "--to", type=address, required=True, metavar="IP:PORT", help="controller address"
    )
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
    except RecursionError:
        raise CommandError(f"cannot read {args.file}: the JSON nests too deeply") from None
    if not isinstance(message, dict):
        raise CommandError("the message must be a JSON object")
    try:
        Heartbeat.from_dict(message)
    except HeartbeatError as exc:
        print(f"warning: the receiver will refuse this message: {exc}", file=sys.stderr)
    datagram = wrap_envelope(message, key, codec=Codec(args.codec), digest=Digest(args.digest))
    ip, port = parse_address(args.to)
    family = socket.AF_INET6 if ipaddress.ip_address(ip).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram, (ip, port))
    except OSError as exc:
        raise OSError(f"could not send to {args.to}: {exc.strerror or exc}") from None
    print(f"sent heartbeat to {format_address((ip, port))} ({args.codec}, {args.digest} trailer)")
    return 0
