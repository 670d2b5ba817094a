"""Tests of amphora_heartbeat.manager.config: octavia.conf in oslo.config's dialect, one object."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from amphora_heartbeat.envelope import wrap_envelope
from amphora_heartbeat.manager.config import ManagerConfig, load_config, read_files
from amphora_heartbeat.options import OptionError
from amphora_heartbeat.testing import build_message

KOLLA = Path(__file__).parent / "data" / "octavia-kolla.conf"


def _conf(tmp_path: Path, text: str, name: str = "octavia.conf") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_octavias() -> None:
    """With no file and no flag every field has Octavia's default."""
    config = load_config()
    assert config == ManagerConfig(
        bind_ip="127.0.0.1",
        bind_port=5555,
        heartbeat_interval=10,
        heartbeat_timeout=60,
        health_check_interval=3,
        failover_threshold=None,
        failover_threads=10,
        sock_rlimit=0,
    )
    assert config.heartbeat_key is None
    assert config.connection is None


def test_a_kolla_octavia_conf_gives_the_health_manager_options() -> None:
    """A kolla-ansible octavia.conf: [health_manager] and [database] read, the rest ignored."""
    values = read_files([KOLLA])
    assert values == {
        "bind_ip": "192.0.2.11",
        "bind_port": 5555,
        "heartbeat_key": "insecure",
        "connection": "mysql+pymysql://octavia:dbpassword@192.0.2.10:3306/octavia",
    }


def test_default_does_not_stand_in_for_a_missing_option(tmp_path: Path) -> None:
    """[DEFAULT] bind_port (the API's, in older files) is not the heartbeat port."""
    path = _conf(tmp_path, "[DEFAULT]\nbind_port = 9876\nheartbeat_timeout = 5\n[health_manager]\n")
    assert load_config([path]).bind_port == 5555
    assert load_config([path]).heartbeat_timeout == 60


def test_the_dialect_comments_delimiters_quotes_and_case(tmp_path: Path) -> None:
    """Comments (# ;), '=' with or without spaces, ':', quotes stripped, section case folded."""
    path = _conf(
        tmp_path,
        "# a comment\n; another\n[Health_Manager]\n"
        "bind_ip=::1\n"
        "bind_port: 0\n"
        "heartbeat_key = 'it''s'\n"
        "# heartbeat_timeout = 1\n"
        "heartbeat_timeout = 2.5\n"
        "Failover_Threads = 3\n"  # option names keep their case: not failover_threads
        '[database]\nconnection = "sqlite:///x.db"\n',
    )
    config = load_config([path])
    assert (config.bind_ip, config.bind_port, config.heartbeat_timeout) == ("::1", 0, 2.5)
    assert config.heartbeat_key == "it''s"
    assert config.failover_threads == 10
    assert config.connection == "sqlite:///x.db"


def test_later_files_win_option_by_option(tmp_path: Path) -> None:
    """Of two files, the later one's value wins for each option it sets; the rest stay."""
    first = _conf(tmp_path, "[health_manager]\nheartbeat_timeout = 30\nbind_port = 6000\n", "a")
    second = _conf(tmp_path, "[health_manager]\nheartbeat_timeout = 40\n", "b")
    config = load_config([first, second])
    assert (config.heartbeat_timeout, config.bind_port) == (40, 6000)
    assert load_config([second, first]).heartbeat_timeout == 30


def test_a_duplicate_option_in_one_file_takes_the_last_value(tmp_path: Path) -> None:
    """Within one file the last of a repeated option wins, as in oslo.config."""
    path = _conf(tmp_path, "[health_manager]\nsock_rlimit = 1\n[health_manager]\nsock_rlimit = 2\n")
    assert load_config([path]).sock_rlimit == 2


def test_flags_override_the_files(tmp_path: Path) -> None:
    """An override wins over the file; an override of None leaves the file's value."""
    path = _conf(tmp_path, "[health_manager]\nheartbeat_timeout = 30\nbind_ip = 127.0.0.1\n")
    config = load_config([path], {"heartbeat_timeout": 7.0, "bind_ip": None})
    assert (config.heartbeat_timeout, config.bind_ip) == (7.0, "127.0.0.1")


def test_empty_values_are_not_set(tmp_path: Path) -> None:
    """`failover_threshold =` (as sample files write it) leaves the default."""
    path = _conf(tmp_path, "[health_manager]\nfailover_threshold =\nheartbeat_key =\n")
    config = load_config([path])
    assert config.failover_threshold is None
    assert config.heartbeat_key is None


def test_project_options_come_from_their_own_section(tmp_path: Path) -> None:
    """[amphora_heartbeat] failover_command and failover_timeout are read."""
    path = _conf(
        tmp_path,
        "[amphora_heartbeat]\nfailover_command = openstack loadbalancer amphora failover"
        " {amphora_id}\nfailover_timeout = 120\n",
    )
    config = load_config([path])
    assert config.failover_command == "openstack loadbalancer amphora failover {amphora_id}"
    assert config.failover_timeout == 120


def test_a_continuation_line_extends_a_value(tmp_path: Path) -> None:
    """An indented line continues the value before it (joined with a newline)."""
    path = _conf(tmp_path, "[amphora_heartbeat]\nfailover_command = run\n  --twice\n")
    assert load_config([path]).failover_command == "run\n--twice"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[health_manager]\nbind_port = 9999x\n", "[health_manager] bind_port: expected a whole"),
        ("[health_manager]\nbind_port = 70000\n", "from 0 to 65535"),
        ("[health_manager]\nheartbeat_timeout = soon\n", "[health_manager] heartbeat_timeout:"),
        ("[health_manager]\nheartbeat_timeout = 0\n", "above 0"),
        ("[health_manager]\nfailover_threshold = 0\n", "[health_manager] failover_threshold:"),
        ("[health_manager]\nfailover_threads = -1\n", "failover_threads"),
        ("[health_manager]\nsock_rlimit = -1\n", "[health_manager] sock_rlimit:"),
        ("[amphora_heartbeat]\nfailover_timeout = nan\n", "[amphora_heartbeat] failover_timeout"),
    ],
)
def test_a_value_of_the_wrong_type_names_file_section_and_option(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A bad value is one OptionError line: the file, [section] and option, and why."""
    path = _conf(tmp_path, text)
    with pytest.raises(OptionError) as info:
        load_config([path])
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("heartbeat_key = secret-before-a-section\n", r"line 1: an option before any \[section\]"),
        ("[health_manager]\nheartbeat_key secret-no-delimiter\n", "line 2: no '=' or ':'"),
    ],
)
def test_a_file_that_is_not_ini_is_refused_without_quoting_it(
    tmp_path: Path, text: str, expected: str
) -> None:
    """A malformed line is named by number, never quoted (it may hold the key)."""
    path = _conf(tmp_path, text)
    with pytest.raises(OptionError, match=expected) as info:
        read_files([path])
    assert "secret" not in str(info.value)


def test_a_missing_or_undecodable_file_is_an_option_error(tmp_path: Path) -> None:
    """A file that cannot be read, or is not UTF-8, is an OptionError naming it."""
    with pytest.raises(OptionError, match=r"cannot read the configuration file .*nowhere"):
        read_files([tmp_path / "nowhere"])
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"[health_manager]\nheartbeat_key = \xe9\n")
    with pytest.raises(OptionError, match="not UTF-8"):
        read_files([path])


def test_dollar_references_resolve_like_oslo_config(tmp_path: Path) -> None:
    """$name (same section, then DEFAULT), ${section.name}, and $$ or \\$ for a literal $."""
    path = _conf(
        tmp_path,
        "[DEFAULT]\nhost = 192.0.2.10\nuser = octavia\n"
        "[database]\nconnection = mysql+pymysql://$user:${secrets.db}@${host}/octavia\n"
        "[secrets]\ndb = pw\n"
        "[health_manager]\nheartbeat_key = a$$b\\$c\nbind_ip = $local\nlocal = 127.0.0.1\n",
    )
    config = load_config([path])
    assert config.connection == "mysql+pymysql://octavia:pw@192.0.2.10/octavia"
    assert config.heartbeat_key == "a$b$c"
    assert config.bind_ip == "127.0.0.1"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[health_manager]\nheartbeat_key = s$nowhere\n", r"\$\{nowhere\} names no option"),
        ("[health_manager]\nheartbeat_key = s$ x\n", "not followed by a name"),
        ("[health_manager]\nheartbeat_key = $a\na = $heartbeat_key\n", "nested too deep"),
    ],
)
def test_a_bad_reference_is_refused_without_the_value(
    tmp_path: Path, text: str, expected: str
) -> None:
    """An unknown name, a stray $ or a loop is an error naming the option, not quoting it."""
    path = _conf(tmp_path, text)
    with pytest.raises(OptionError, match=expected) as info:
        read_files([path])
    assert "[health_manager] heartbeat_key" in str(info.value)


def test_the_key_and_the_url_stay_out_of_repr() -> None:
    """repr() of a configuration shows neither the heartbeat key nor the database URL."""
    config = ManagerConfig(heartbeat_key="insecure", connection="mysql://u:pw@h/db")
    assert "insecure" not in repr(config)
    assert "pw" not in repr(config)
    assert "bind_port=5555" in repr(config)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bind_port", 65536),
        ("heartbeat_interval", 0),
        ("heartbeat_timeout", -1),
        ("health_check_interval", 0),
        ("failover_timeout", 0),
        ("failover_threshold", 0),
        ("failover_threads", 0),
        ("sock_rlimit", -1),
    ],
)
def test_out_of_range_fields_are_refused(field: str, value: float) -> None:
    """Each bound is checked once, when the object is made."""
    with pytest.raises(OptionError, match=field):
        ManagerConfig(**dict[str, Any]({field: value}))


def test_differences_lists_changed_fields() -> None:
    """differences() names exactly the fields whose values differ."""
    a = ManagerConfig()
    b = ManagerConfig(heartbeat_key="k", heartbeat_timeout=5)
    assert a.differences(b) == ["heartbeat_key", "heartbeat_timeout"]
    assert a.differences(a) == []


# --- the command line, in processes --------------------------------------------------


def _manager(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AMPHORA_HEARTBEAT_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "amphora_heartbeat", "manager", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize(
    ("text", "flags", "expected"),
    [
        ("[health_manager]\nheartbeat_key = k\n", [], "no database: --db URL, or [database]"),
        ("[database]\nconnection = sqlite:///x.db\n", [], "no key: a key is needed"),
        ("[health_manager]\nbind_port = many\n", ["--key", "k"], "[health_manager] bind_port:"),
        (
            "[amphora_heartbeat]\nfailover_command = failover {amphora}\n",
            ["--key", "k", "--db", "sqlite:///x.db"],
            "--failover-command: the failover command: unknown placeholder {amphora}",
        ),
        ("", ["--config-file", "/nonexistent/octavia.conf"], "cannot read the configuration"),
        (
            "[health_manager]\nfailover_threads = 0\n",
            ["--key", "k", "--db", "sqlite:///x.db"],
            "[health_manager] failover_threads: expected a whole number from 1",
        ),
    ],
)
def test_the_command_refuses_bad_configuration_with_exit_2(
    tmp_path: Path, text: str, flags: list[str], expected: str
) -> None:
    """A missing key or database, a bad value or template: one line, exit status 2."""
    path = _conf(tmp_path, text)
    done = _manager("--config-file", str(path), *flags)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("amphora-heartbeat manager: error: ")
    assert expected in lines[0]


def test_flags_win_over_the_file_in_the_command(tmp_path: Path) -> None:
    """--bind and --key given on the command line override octavia.conf's in a real run."""
    db = tmp_path / "health.db"
    path = _conf(
        tmp_path,
        f"[database]\nconnection = sqlite:///{db}\n"
        "[health_manager]\nbind_ip = 192.0.2.11\nbind_port = 5555\nheartbeat_key = file-key\n",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "amphora_heartbeat", "manager", "--config-file", str(path),
         "--bind", "127.0.0.1:0", "--key", "flag-key"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    try:
        assert line.startswith("listening on 127.0.0.1:")
        port = int(line.rsplit(":", 1)[1])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(wrap_envelope(build_message(), "flag-key"), ("127.0.0.1", port))
            sock.sendto(wrap_envelope(build_message(), "file-key"), ("127.0.0.1", port))
            _read_until(proc, "rejected heartbeat datagram")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    counters = json.loads(out.strip().splitlines()[-1])
    assert (counters["accepted"], counters["rejected.invalid_hmac"]) == (1, 1)


def _read_until(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if text in line:
            return
    raise AssertionError(f"stderr closed before {text!r}")
