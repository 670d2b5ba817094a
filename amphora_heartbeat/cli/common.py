"""What every command shares: its options, declared once, key loading, errors, signals.

A command module has ``HELP`` (one line for the command list), ``DESCRIPTION``,
``add_arguments(parser)`` and ``run(args) -> int``.  Options that several
commands take are declared once in :data:`OPTIONS` and added by name with
:func:`add_options`, so a new shared option is one line.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..envelope import KeyRing
from ..options import (
    OptionError,
    format_address,
    parse_address,
    parse_count,
    parse_database_url,
    parse_fraction,
    parse_keys,
    parse_seconds,
)
from ..store import MySQLStore, PostgresStore, SQLiteStore, open_store

__all__ = [
    "KEY_ENV",
    "OPTIONS",
    "CommandError",
    "add_options",
    "address",
    "addresses",
    "argtype",
    "count",
    "database",
    "fraction",
    "load_key",
    "open_database",
    "seconds",
    "serving_metrics",
    "signing_key",
    "stop_on_signals",
]

#: The environment variable a key (or key ring, one a line) may come from.
KEY_ENV = "AMPHORA_HEARTBEAT_KEY"


class CommandError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def argtype(parse: Callable[..., Any], name: str, **options: Any) -> Callable[[str], Any]:
    """Return an argparse type calling ``parse(text, **options)``.

    A :class:`ValueError` (:class:`OptionError` included) becomes argparse's own
    usage error, its message after the option's name (exit status 2).
    """

    def convert(text: str) -> Any:
        try:
            return parse(text, **options)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in its messages
    return convert


def _check_address(text: str, *, several: bool = False) -> str:
    for part in text.split(",") if several else [text]:
        host, _ = parse_address(part)
        try:
            ipaddress.ip_address(host)  # numeric: a name would need a lookup
        except ValueError:
            raise ValueError(f"{part!r}: {host!r} is not an IP address") from None
    return text


#: Seconds above zero, finite.
seconds = argtype(parse_seconds, "seconds")
#: A whole number from 1 to 2**31 - 1.
count = argtype(parse_count, "count")
#: A fraction from 0 to 1.
fraction = argtype(parse_fraction, "fraction")
#: A database URL, not empty.
database = argtype(parse_database_url, "database URL")
#: ``IP:PORT`` or ``[IPv6]:PORT``, checked and kept as text.
address = argtype(_check_address, "address")
#: Addresses separated by commas, each checked, kept as text.
addresses = argtype(_check_address, "addresses", several=True)


def _add_key(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--key",
        action="append",
        metavar="K",
        help="heartbeat key; repeat for a key ring; default none "
        f"(prefer --key-file or ${KEY_ENV})",
    )
    group.add_argument(
        "--key-file",
        metavar="F",
        help="file holding the key as UTF-8; one trailing newline is ignored; "
        f"several lines make a key ring; default none, then ${KEY_ENV}",
    )


def _timing(flag: str, default: float, text: str) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            flag, type=seconds, default=default, metavar="S", help=f"{text}; default %(default)s"
        )

    return add


def _option(*flags: str, **kwargs: Any) -> Callable[[argparse.ArgumentParser], None]:
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*flags, **kwargs)

    return add


#: Options shared by several commands, by name: each adds itself to a parser.
OPTIONS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "key": _add_key,
    "bind": _option(
        "--bind",
        type=address,
        default="127.0.0.1:5555",
        metavar="IP:PORT",
        help="address to receive on; default %(default)s",
    ),
    "json": _option("--json", action="store_true", help="print JSON lines"),
    "heartbeat-timeout": _timing(
        "--heartbeat-timeout", 60.0, "seconds of silence before an amphora is stale"
    ),
    "heartbeat-interval": _timing(
        "--heartbeat-interval", 10.0, "the amphorae's heartbeat interval, seconds"
    ),
    "health-check-interval": _timing(
        "--health-check-interval", 3.0, "seconds between stale checks"
    ),
    "tick": _timing("--tick", 0.1, "seconds between database writes"),
}


def add_options(parser: argparse.ArgumentParser, *names: str) -> None:
    """Add the shared options ``names`` (keys of :data:`OPTIONS`) to ``parser``."""
    for name in names:
        OPTIONS[name](parser)


def _parse_keys(text: str) -> KeyRing:
    try:
        return parse_keys(text)
    except OptionError as exc:
        raise CommandError(str(exc)) from None


def load_key(args: argparse.Namespace) -> KeyRing:
    """Return the key from ``--key``, ``--key-file`` or the environment, in that order."""
    if args.key:
        if not all(args.key):
            raise CommandError("--key: an empty key is refused")
        return list(args.key) if len(args.key) > 1 else str(args.key[0])
    if args.key_file is not None:
        try:
            with open(args.key_file, encoding="utf-8") as f:
                return _parse_keys(f.read())
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read the key file {args.key_file}: {exc}") from None
    text = os.environ.get(KEY_ENV)
    if text is None:
        raise CommandError(f"no key: a key is needed: --key-file F, ${KEY_ENV} or --key K")
    return _parse_keys(text)


def open_database(url: str) -> SQLiteStore | PostgresStore | MySQLStore:
    """Open the store ``url`` names; a URL it cannot take is a usage error.

    An unreachable database is the store's :class:`~amphora_heartbeat.store.StoreError`
    and a missing driver an :class:`ImportError`, both runtime failures (exit status 1).
    """
    try:
        return open_store(url)
    except ValueError as exc:
        raise CommandError(f"--db: {exc}") from None


def signing_key(key: KeyRing) -> str | bytes:
    """Return the key that signs: the key itself, or a ring's first."""
    return key if isinstance(key, (str, bytes)) else key[0]


@contextmanager
def stop_on_signals(
    on_stop: Callable[[], object] | None = None,
) -> Iterator[Callable[[], bool]]:
    """Turn SIGINT and SIGTERM into a flag the caller's loop polls (and a call of ``on_stop``)."""
    stopped = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopped
        stopped = True
        if on_stop is not None:
            on_stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: stopped
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def serving_metrics(
    metrics: tuple[str, int] | None, make_collector: Callable[[], Any]
) -> Iterator[None]:
    """Serve the collector ``make_collector()`` returns at ``http://IP:PORT/metrics``.

    Only while in the block, and only if ``metrics`` (IP, port) is given; prints
    the address it serves.  ``make_collector`` is called after the optional
    extra is imported, so it may import it too.
    """
    if not metrics:
        yield
        return
    from ..manager.metrics import serve_collector  # noqa: PLC0415 - an optional extra

    host, port = metrics
    try:
        server, _ = serve_collector(make_collector(), host, port)
    except OSError as exc:
        raise OSError(f"cannot serve metrics on {host}:{port}: {exc}") from None
    name = server.server_address
    print(f"metrics on http://{format_address((str(name[0]), int(name[1])))}/metrics", flush=True)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
