"""The manager's configuration: one object, read from ``octavia.conf`` files and flags.

:class:`ManagerConfig` holds every setting the health manager takes, each named
as Octavia names it, checked once when the object is made.  :func:`read_files`
reads the options it knows from one or more files written in oslo.config's INI
dialect (Octavia's ``octavia.conf``), later files winning option by option as
oslo.config does; :func:`load_config` lays values given elsewhere (the command
line) over them.

What is read:

* ``[health_manager]``: ``bind_ip``, ``bind_port``, ``heartbeat_key``,
  ``heartbeat_interval``, ``heartbeat_timeout``, ``health_check_interval``,
  ``failover_threshold``, ``failover_threads``, ``sock_rlimit``;
* ``[database]``: ``connection``;
* ``[amphora_heartbeat]``: this project's own options, ``failover_command`` and
  ``failover_timeout`` (Octavia has no such section, so it never clashes).

The dialect, as oslo.config parses it: ``key = value``, ``key=value`` or
``key: value``; whole-line comments starting ``#`` or ``;`` (no inline
comments); indented lines continue a value; a value wrapped in matching quotes
loses them; section names other than ``DEFAULT`` are case-insensitive, option
names are not.  Unknown sections and options are ignored.  An empty value means
the option is not set.

``$name`` / ``${name}`` in a value is replaced by option ``name`` of the same
section or, failing that, of ``[DEFAULT]``; ``${section.name}`` names another
section; ``$$`` (or ``\\$``) is a literal ``$``: oslo.config's substitution, so a
heartbeat key holding ``$`` means here what it means to Octavia.  A reference to
an option no file sets is an error (oslo.config would use a default of an option
registered in Octavia's code, which this reader cannot know).  Unlike
Python's ``configparser``, an option missing from its section is **not** taken
from ``[DEFAULT]``: oslo.config does not do that either, and an older
``octavia.conf`` has the API's ``bind_port`` in ``[DEFAULT]``.

Errors are :class:`~amphora_heartbeat.options.OptionError`, one line naming the
file, section and option, never the value of ``heartbeat_key`` nor of
``connection`` (it may hold a password).
"""

from __future__ import annotations

import configparser
import functools
import os
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..envelope import KeyRing
from ..options import OptionError, parse_count, parse_seconds

__all__ = ["OPTIONS", "RESTART_FIELDS", "ManagerConfig", "load_config", "read_files"]

#: Fields a running manager cannot change: a reload that changes one logs that
#: it needs a restart and keeps the running value.
RESTART_FIELDS = (
    "bind_ip",
    "bind_port",
    "sock_rlimit",
    "connection",
    "failover_command",
    "failover_timeout",
)


def _check(name: str, ok: bool, what: str) -> None:
    if not ok:
        raise OptionError(f"{name} must be {what}")


@attrs.frozen(kw_only=True)
class ManagerConfig:
    """Every setting of the health manager, checked once; defaults are Octavia's.

    Times are seconds (floats: Octavia's are whole numbers, any positive number
    is accepted here).  ``heartbeat_key`` and ``connection`` are left out of
    ``repr``: the key is a secret and the URL may hold a password.

    :raises OptionError: a value out of its range.
    """

    #: Address to receive heartbeats on (IPv4, IPv6 or a host name).
    bind_ip: str = "127.0.0.1"
    #: UDP port to receive on; 0 picks a free one.
    bind_port: int = 5555
    #: The heartbeat key (or key ring); None: not configured.
    heartbeat_key: KeyRing | None = attrs.field(default=None, repr=False)
    #: The amphorae's heartbeat interval, seconds.
    heartbeat_interval: float = 10.0
    #: Seconds of silence after which an amphora is stale.
    heartbeat_timeout: float = 60.0
    #: Seconds between stale checks.
    health_check_interval: float = 3.0
    #: Stale amphorae at once at which none is failed over (storm guard); None: no guard.
    failover_threshold: int | None = None
    #: Most failovers running at once.
    failover_threads: int = 10
    #: SO_RCVBUF of the receive socket, bytes; 0 keeps the system's.
    sock_rlimit: int = 0
    #: The database URL (``[database] connection``); None: not configured.
    connection: str | None = attrs.field(default=None, repr=False)
    #: The failover command template (``[amphora_heartbeat] failover_command``); None: none.
    failover_command: str | None = None
    #: Seconds a failover command may run before it is killed and counted as failed.
    failover_timeout: float = 300.0

    def __attrs_post_init__(self) -> None:
        _check("bind_port", 0 <= self.bind_port <= 65535, "from 0 to 65535")
        for name in ("heartbeat_interval", "heartbeat_timeout", "health_check_interval"):
            _check(name, getattr(self, name) > 0, "above 0 seconds")
        _check("failover_timeout", self.failover_timeout > 0, "above 0 seconds")
        threshold = self.failover_threshold
        _check("failover_threshold", threshold is None or threshold >= 1, "None or at least 1")
        _check("failover_threads", self.failover_threads >= 1, "at least 1")
        _check("sock_rlimit", self.sock_rlimit >= 0, "at least 0")

    def differences(self, other: ManagerConfig) -> list[str]:
        """Return the names of the fields whose values differ in ``other``, in field order."""
        return [
            f.name
            for f in attrs.fields(ManagerConfig)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def _text(value: str) -> str:
    return value


#: What the files may set: field name to (section, parser of the text).
OPTIONS: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "bind_ip": ("health_manager", _text),
    "bind_port": ("health_manager", functools.partial(parse_count, minimum=0, maximum=65535)),
    "heartbeat_key": ("health_manager", _text),
    "heartbeat_interval": ("health_manager", parse_seconds),
    "heartbeat_timeout": ("health_manager", parse_seconds),
    "health_check_interval": ("health_manager", parse_seconds),
    "failover_threshold": ("health_manager", parse_count),
    "failover_threads": ("health_manager", parse_count),
    "sock_rlimit": ("health_manager", functools.partial(parse_count, minimum=0)),
    "connection": ("database", _text),
    "failover_command": ("amphora_heartbeat", _text),
    "failover_timeout": ("amphora_heartbeat", parse_seconds),
}
# Section -> option -> (value, the file it came from), all files merged.
_Sections = dict[str, dict[str, tuple[str, str]]]


def _section_name(name: str) -> str:
    # oslo.config folds group names to lower case, all but DEFAULT.
    return name if name == "DEFAULT" else name.lower()


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def _parse_error(path: str, exc: configparser.ParsingError) -> OptionError:
    """Return a one-line error for a file that is not INI, quoting no line (it may hold a key)."""
    if isinstance(exc, configparser.MissingSectionHeaderError):
        return OptionError(f"{path}: line {exc.lineno}: an option before any [section]")
    return OptionError(f"{path}: line {exc.errors[0][0]}: no '=' or ':' in an option line")


def _read_one(path: str, into: _Sections) -> None:
    """Merge the options of the file ``path`` into ``into``, later values winning."""
    parser = configparser.RawConfigParser(
        delimiters=("=", ":"),
        comment_prefixes=("#", ";"),
        inline_comment_prefixes=None,
        strict=False,
        empty_lines_in_values=False,
        # An ordinary section here: no fallback from [DEFAULT] (see the module docstring).
        default_section="\0",
        interpolation=None,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # names keep their case
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except OSError as exc:
        raise OptionError(f"cannot read the configuration file {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise OptionError(f"{path}: not UTF-8 text") from None
    except configparser.ParsingError as exc:
        raise _parse_error(path, exc) from None
    for section in parser.sections():
        options = into.setdefault(_section_name(section), {})
        for key, value in parser.items(section):
            options[key] = (_unquote(value or ""), path)


class _Template(string.Template):
    # oslo.config's pattern: a name may name another section with a dot.
    idpattern = r"[_a-z][._a-z0-9]*"


class _References(dict[str, str]):
    """Resolve ``$name`` references in the values of one section, as oslo.config does."""

    def __init__(self, sections: _Sections, section: str, depth: int) -> None:
        super().__init__()
        self.sections = sections
        self.section = section
        self.depth = depth

    def __missing__(self, name: str) -> str:
        section, dot, option = name.rpartition(".")
        places = [_section_name(section)] if dot else [self.section, "DEFAULT"]
        for place in places:
            found = self.sections.get(place, {}).get(option)
            if found is not None:
                return _substitute(self.sections, place, found[0], self.depth + 1)
        raise OptionError(f"${{{name}}} names no option the configuration files set")


def _substitute(sections: _Sections, section: str, value: str, depth: int = 0) -> str:
    if "$" not in value:
        return value
    if depth > 10:
        raise OptionError("references nested too deep (a loop of $name references?)")
    template = _Template(value.replace("\\$", "$$"))
    try:
        return template.substitute(_References(sections, section, depth))
    except OptionError:
        raise
    except ValueError:
        raise OptionError("a '$' not followed by a name (write $$ for a literal $)") from None


def _value(sections: _Sections, field: str) -> Any:
    """Return the parsed value of ``field`` from ``sections``, or None if no file sets it."""
    section, parse = OPTIONS[field]
    found = sections.get(section, {}).get(field)
    if found is None:
        return None
    raw, path = found
    try:
        text = _substitute(sections, section, raw)
        return parse(text) if text else None
    except OptionError as exc:
        # The string parsers never fail, so no message quotes a key or a URL.
        raise OptionError(f"{path}: [{section}] {field}: {exc}") from None


def read_files(paths: Iterable[str | os.PathLike[str]]) -> dict[str, Any]:
    """Return the options the files ``paths`` set, by field name, parsed and checked.

    Files are read in order; a later file's value wins (option by option).
    Options no file sets (or sets to an empty value) are left out.

    :raises OptionError: a file cannot be read or parsed, or a value has the
        wrong type (the message names file, section and option).
    """
    sections: _Sections = {}
    for path in paths:
        _read_one(os.fspath(path), sections)
    values = {field: _value(sections, field) for field in OPTIONS}
    return {field: value for field, value in values.items() if value is not None}


def load_config(
    paths: Sequence[str | os.PathLike[str]] = (), overrides: Mapping[str, Any] | None = None
) -> ManagerConfig:
    """Return the configuration the files ``paths`` give, with ``overrides`` laid over them.

    ``overrides`` maps field names to values given elsewhere (the command
    line); a None value means "not given" and leaves the file's (or the default).

    :raises OptionError: as :func:`read_files`, or a value out of its range.
    """
    values = read_files(paths)
    values.update((k, v) for k, v in (overrides or {}).items() if v is not None)
    return ManagerConfig(**values)
