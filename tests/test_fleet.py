"""Tests of the fleet load generator: real loopback sockets, real envelopes."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amphora_heartbeat.cli.fleet import _per_second, add_arguments
from amphora_heartbeat.envelope import Codec, Digest, Unwrapper
from amphora_heartbeat.fleet import (
    DEFAULT_VARIANTS,
    PREBUILD_BUDGET,
    Fleet,
    FleetProgress,
    plan_variants,
    run_fleet,
)
from amphora_heartbeat.models import Heartbeat, MemberKind
from amphora_heartbeat.testing import make_fleet

KEY = "fleet-test-key"
DEADLINE = 10.0


class Receiver:
    """A UDP socket on 127.0.0.1 that collects datagrams in a thread."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.packets: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @property
    def target(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.packets.append(self.sock.recv(65536))
            except TimeoutError:
                continue

    def wait_for(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + DEADLINE
        while len(self.packets) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return list(self.packets)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made = [Receiver(), Receiver()]
    yield made
    for r in made:
        r.close()


def parse(packets: list[bytes]) -> list[Heartbeat]:
    unwrapper = Unwrapper(KEY)
    return [Heartbeat.from_dict(unwrapper.unwrap(p)) for p in packets]


def test_targets_take_the_senders_address_forms() -> None:
    """IPv4 and bracketed IPv6 targets work; a target without a port is the caller's ValueError."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as six:
        try:
            six.bind(("::1", 0))
        except OSError:
            pytest.skip("this host has no IPv6 loopback")
        port = six.getsockname()[1]
        six.settimeout(DEADLINE)
        run_fleet([f"[::1]:{port}"], KEY, amphorae=1, rate=100, count=1)
        assert parse([six.recv(65536)])[0].seq == 0
    for bad in ("127.0.0.1", "[::1]5555", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match="port"):
            run_fleet([bad], KEY, amphorae=1, count=1)


def test_fleet_sends_valid_version_3_heartbeats(receivers: list[Receiver]) -> None:
    """Every datagram verifies and parses as version 3, each amphora's seq counts 0, 1, 2."""
    rx = receivers[0]
    summary = run_fleet([rx.target], KEY, amphorae=5, rate=500, count=15, flapping=0)
    assert summary.sent == 15
    assert summary.send_errors == 0
    assert not summary.prebuilt
    heartbeats = parse(rx.wait_for(15))
    assert len(heartbeats) == 15
    assert {h.version for h in heartbeats} == {3}
    ids = {a.amphora_id for a in make_fleet(5)}
    seqs: dict[str, list[int]] = {}
    for h in heartbeats:
        seqs.setdefault(h.amphora_id, []).append(h.seq)
        assert len(h.listeners) == 2
        assert len(h.pools) == 2
        assert all(len(p.members) == 4 for p in h.pools.values())
        assert all(m.kind is MemberKind.UP for p in h.pools.values() for m in p.members.values())
    assert set(seqs) == ids
    assert all(s == [0, 1, 2] for s in seqs.values())


def test_round_robin_over_two_receivers(receivers: list[Receiver]) -> None:
    """Each amphora alternates between the two controllers, as the agent does."""
    a, b = receivers
    summary = run_fleet([a.target, b.target], KEY, amphorae=4, rate=1000, count=16)
    assert summary.per_target == (8, 8)
    got_a = parse(a.wait_for(8))
    got_b = parse(b.wait_for(8))
    assert len(got_a) == len(got_b) == 8
    where = {(h.amphora_id, h.seq): "a" for h in got_a} | {
        (h.amphora_id, h.seq): "b" for h in got_b
    }
    for amphora in make_fleet(4):
        order = [where[(amphora.amphora_id, seq)] for seq in range(4)]
        assert order in (["a", "b", "a", "b"], ["b", "a", "b", "a"])


def test_silent_fraction_goes_quiet_after_the_first_round(receivers: list[Receiver]) -> None:
    """Silent amphorae are heard once, then never again; the others keep sending."""
    rx = receivers[0]
    summary = run_fleet([rx.target], KEY, amphorae=10, rate=1000, count=40, silent=0.3)
    assert len(summary.silent_ids) == 3
    heartbeats = parse(rx.wait_for(40))
    assert len(heartbeats) == 40
    counts: dict[str, int] = {}
    for h in heartbeats:
        counts[h.amphora_id] = counts.get(h.amphora_id, 0) + 1
    assert all(counts[i] == 1 for i in summary.silent_ids)
    # 40 packets: one round of 10, then 30 from the 7 speaking amphorae.
    others = [n for i, n in counts.items() if i not in summary.silent_ids]
    assert len(others) == 7
    assert sum(others) == 37


def test_all_silent_ends_the_run(receivers: list[Receiver]) -> None:
    """When every amphora falls silent the run ends after its first round."""
    summary = run_fleet([receivers[0].target], KEY, amphorae=3, rate=1000, silent=1.0)
    assert summary.sent == 3


def test_members_flap_between_up_and_down(receivers: list[Receiver]) -> None:
    """With every amphora flapping, one member per amphora goes DOWN and comes back UP."""
    rx = receivers[0]
    run_fleet([rx.target], KEY, amphorae=2, rate=1000, count=12, flapping=1.0)
    heartbeats = parse(rx.wait_for(12))
    for amphora_id in {h.amphora_id for h in heartbeats}:
        downs = [
            sum(m.kind is MemberKind.DOWN for p in h.pools.values() for m in p.members.values())
            for h in sorted(heartbeats, key=lambda h: h.seq)
            if h.amphora_id == amphora_id
        ]
        assert downs == [0, 0, 1, 1, 0, 0]


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_message_versions(receivers: list[Receiver], version: int) -> None:
    """Every message version parses as that version, with its pools."""
    rx = receivers[0]
    run_fleet([rx.target], KEY, amphorae=2, rate=1000, count=2, message_version=version)
    heartbeats = parse(rx.wait_for(2))
    assert [h.version for h in heartbeats] == [version, version]
    assert [h.versioned for h in heartbeats] == [version > 0] * 2
    assert all(len(h.pools) == 2 for h in heartbeats)


def test_prebuilt_ring_wraps_seq_and_uses_codec_and_digest(receivers: list[Receiver]) -> None:
    """Pre-built packets cycle through `variants` seq values, with the chosen codec and trailer."""
    rx = receivers[0]
    summary = run_fleet(
        [rx.target],
        KEY,
        amphorae=1,
        rate=math.inf,
        count=7,
        prebuilt=True,
        variants=3,
        codec=Codec.ZSTD,
        digest=Digest.RAW,
    )
    assert summary.prebuilt
    assert summary.variants == 3
    assert math.isinf(summary.target_rate)
    assert summary.to_dict()["target_rate"] is None
    packets = rx.wait_for(7)
    unwrapper = Unwrapper(KEY)
    found = [unwrapper.inspect(p) for p in packets]
    assert {(u.codec, u.digest) for u in found} == {(Codec.ZSTD, Digest.RAW)}
    assert [u.message["seq"] for u in found] == [0, 1, 2, 0, 1, 2, 0]


def test_high_rate_chooses_prebuilt(receivers: list[Receiver]) -> None:
    """Above the fresh-build rate the packets are pre-built by default."""
    summary = run_fleet([receivers[0].target], KEY, amphorae=2, rate=50_000, count=4, variants=2)
    assert summary.prebuilt
    assert summary.build_seconds > 0


def test_planned_variants_are_at_most_the_default_per_amphora() -> None:
    """A small fleet with no bound on its run gets the default ring, not more."""
    assert plan_variants(1) == DEFAULT_VARIANTS
    assert plan_variants(10, rate=1000, duration=3600) == DEFAULT_VARIANTS


def test_planned_variants_stay_within_the_budget() -> None:
    """A large fleet gets fewer packets each, so that all of them fit the budget."""
    assert plan_variants(100_000) == PREBUILD_BUDGET // 100_000 == 4
    assert plan_variants(10, budget=25) == 2
    assert plan_variants(10, budget=25, rate=1000, duration=3600) == 2


def test_planned_variants_are_no_more_than_the_run_sends() -> None:
    """No packet is built that the run will not send: rate times duration, or count."""
    assert plan_variants(100, rate=100, duration=2.5) == 3  # 250 packets over 100 amphorae
    assert plan_variants(100, count=300) == 3
    assert plan_variants(100, count=300, rate=100, duration=1) == 1
    assert plan_variants(100, rate=math.inf, duration=1) == DEFAULT_VARIANTS


def test_planned_variants_are_at_least_one() -> None:
    """However large the fleet or short the run, each amphora gets one packet."""
    assert plan_variants(PREBUILD_BUDGET + 1) == 1
    assert plan_variants(100, count=0) == 1
    with pytest.raises(ValueError, match="amphora"):
        plan_variants(0)
    with pytest.raises(ValueError, match="budget"):
        plan_variants(1, budget=0)


def test_prebuilt_run_plans_its_variants(receivers: list[Receiver]) -> None:
    """Without `variants` a pre-built run builds what it will send, so `seq` does not wrap."""
    rx = receivers[0]
    summary = run_fleet([rx.target], KEY, amphorae=2, rate=math.inf, count=6, prebuilt=True)
    assert summary.variants == 3
    unwrapper = Unwrapper(KEY)
    seqs = [unwrapper.unwrap(p)["seq"] for p in rx.wait_for(6)]
    assert sorted(seqs) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("prebuilt", [True, False])
def test_ready_is_called_once_before_the_first_packet(prebuilt: bool) -> None:
    """`ready` comes once, after the packets are built and before any is sent."""
    events: list[object] = []

    class Recording(Fleet):
        def build(self, variants: int) -> list[list[bytes]]:
            events.append("built")
            return super().build(variants)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.setblocking(False)

        def ready() -> None:
            # Loopback delivers within sendto: a packet sent already would be queued here.
            try:
                rx.recv(65536)
            except BlockingIOError:
                events.append("ready, nothing sent")
            else:
                events.append("ready after a packet")

        target = f"127.0.0.1:{rx.getsockname()[1]}"
        fleet = Recording(3, KEY)
        summary = fleet.run([target], rate=1000, count=9, prebuilt=prebuilt, ready=ready)
    assert events == [*(["built"] if prebuilt else []), "ready, nothing sent"]
    assert summary.sent == 9


def test_duration_and_stop_end_the_run(receivers: list[Receiver]) -> None:
    """A duration ends a slow run on time, and a set stop event ends it at once."""
    target = receivers[0].target
    start = time.monotonic()
    summary = run_fleet([target], KEY, amphorae=2, interval=100.0, duration=0.3)
    assert time.monotonic() - start < DEADLINE
    # The two amphorae are spread over the interval: only the first is due yet.
    assert summary.sent == 1
    stop = threading.Event()
    stop.set()
    assert run_fleet([target], KEY, amphorae=2, rate=10, stop=stop).sent == 0


def test_progress_is_reported(receivers: list[Receiver]) -> None:
    """The progress callback sees the counts grow and the last report matches the summary."""
    reports: list[FleetProgress] = []
    summary = run_fleet(
        [receivers[0].target],
        KEY,
        amphorae=3,
        rate=200,
        count=20,
        progress=reports.append,
        progress_interval=0.01,
    )
    assert len(reports) >= 2
    assert reports[-1].sent == summary.sent == 20
    assert [r.sent for r in reports] == sorted(r.sent for r in reports)
    assert reports[-1].rate > 0


def test_progress_is_reported_while_a_slow_fleet_waits(receivers: list[Receiver]) -> None:
    """Between two packets half a second apart, progress still comes every interval."""
    reports: list[FleetProgress] = []
    run_fleet(
        [receivers[0].target],
        KEY,
        amphorae=1,
        rate=2,
        count=2,
        progress=reports.append,
        progress_interval=0.05,
    )
    waiting = [r for r in reports if r.sent == 1]
    assert len(waiting) >= 2  # without reports during the wait: one, when the packet is due
    assert [r.elapsed for r in waiting] == sorted(r.elapsed for r in waiting)


def test_send_errors_are_counted_not_raised() -> None:
    """A send the OS refuses is counted, as the agent does, and the run goes on."""
    # Port 0 is not a valid destination: sendto fails with an OSError each time.
    summary = run_fleet(["127.0.0.1:0"], KEY, amphorae=2, rate=1000, count=3)
    assert summary.sent == 3
    assert summary.send_errors == 3
    assert summary.per_target == (0,)
    assert summary.send_error == "Invalid argument"  # the system's reason
    assert run_fleet(["127.0.0.1:9"], KEY, amphorae=1, count=1).send_error == ""


def test_invalid_arguments() -> None:
    """Contradictory or impossible settings are the caller's ValueError."""
    target = ["127.0.0.1:9"]
    with pytest.raises(ValueError, match="either"):
        run_fleet(target, KEY, amphorae=1, rate=1, interval=1)
    with pytest.raises(ValueError, match="target"):
        run_fleet([], KEY, amphorae=1)
    with pytest.raises(ValueError, match="rate"):
        run_fleet(target, KEY, amphorae=1, rate=0)
    with pytest.raises(ValueError, match="interval"):
        run_fleet(target, KEY, amphorae=1, interval=-1)
    with pytest.raises(ValueError, match="variants"):
        run_fleet(target, KEY, amphorae=1, variants=0)
    with pytest.raises(ValueError, match="amphora"):
        Fleet(0, KEY)
    with pytest.raises(ValueError, match="version"):
        Fleet(1, KEY, message_version=4)
    with pytest.raises(ValueError, match="fraction"):
        Fleet(1, KEY, silent=1.5)


def test_fleet_signs_with_the_first_key_of_a_ring() -> None:
    """With a key ring the first key signs, so a receiver holding only it verifies."""
    fleet = Fleet(1, ["new", "old"])
    Unwrapper("new").unwrap(fleet.packet(0, 5))


def test_add_arguments_parses_the_issue_options() -> None:
    """The documented options parse, `--rate max` meaning as fast as possible."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [
            *("--to", "127.0.0.1:1,[::1]:2", "--key", "a", "--key", "b", "--amphorae", "5"),
            *("--listeners", "1", "--pools", "3", "--members", "2", "--rate", "max"),
            *("--duration", "2", "--codec", "zstd", "--silent", "0.5", "--message-version", "1"),
        ]
    )
    assert math.isinf(args.rate)
    assert args.key == ["a", "b"]
    assert (args.listeners, args.pools, args.members, args.codec) == (1, 3, 2, "zstd")
    assert args.variants is None  # planned by run_fleet
    with pytest.raises(SystemExit):
        parser.parse_args(
            ["--to", "127.0.0.1:1", "--amphorae", "1", "--rate", "1", "--interval", "1"]
        )
    with pytest.raises(SystemExit):
        parser.parse_args(["--to", "127.0.0.1:1", "--amphorae", "1", "--silent", "2"])
    with pytest.raises(SystemExit):
        parser.parse_args(["--to", "127.0.0.1:1", "--amphorae", "1", "--rate", "-3"])


def test_rates_read_well_when_slow() -> None:
    """A slow fleet's rate has one decimal (0.2/s, not 0/s); a fast one is a whole number."""
    assert _per_second(0.2) == "0.2/s"
    assert _per_second(9.94) == "9.9/s"
    assert _per_second(10.0) == "10/s"
    assert _per_second(12345.6) == "12,346/s"


def test_cli_bounded_run_prints_no_until_stopped_line(receivers: list[Receiver]) -> None:
    """With --count the first stderr line is progress, and the summary says '1 amphora'."""
    env = dict(os.environ, AMPHORA_HEARTBEAT_KEY=KEY)
    out = subprocess.run(
        _cli("--to", receivers[0].target, "--amphorae", "1", "--count", "2", "--rate", "20"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert out.stderr.startswith("sent ")
    assert "until stopped" not in out.stderr
    assert out.stdout.startswith("sent 2 heartbeats from 1 amphora in ")
    assert re.search(r"\(\d+(\.\d)?/s, fresh\)", out.stdout)


def _cli(*args: str, module: str = "amphora_heartbeat") -> list[str]:
    if module == "amphora_heartbeat":
        return [sys.executable, "-m", module, "fleet", *args]
    return [sys.executable, "-m", module, *args]


def test_cli_sends_and_prints_json_summary(receivers: list[Receiver], tmp_path: Path) -> None:
    """The command sends the requested count, reads the key file, and prints a JSON summary."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n", encoding="utf-8")
    a, b = receivers
    out = subprocess.run(
        _cli(
            "--to",
            f"{a.target},{b.target}",
            "--key-file",
            str(key_file),
            "--amphorae",
            "3",
            "--rate",
            "500",
            "--count",
            "6",
            "--progress-interval",
            "0.01",
            "--json",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    summary = json.loads(out.stdout)
    assert summary["sent"] == 6
    assert summary["per_target"] == [3, 3]
    assert "sent 6" in out.stderr
    assert len(parse(a.wait_for(3) + b.wait_for(3))) == 6
    assert KEY not in out.stdout + out.stderr


@pytest.mark.parametrize("module", ["amphora_heartbeat"])
def test_cli_key_from_environment_and_plain_summary(receivers: list[Receiver], module: str) -> None:
    """`python -m amphora_heartbeat fleet` (and the module itself) read AMPHORA_HEARTBEAT_KEY."""
    rx = receivers[0]
    env = dict(os.environ, AMPHORA_HEARTBEAT_KEY=KEY)
    out = subprocess.run(
        _cli(
            *("--to", rx.target, "--amphorae", "2", "--count", "2", "--interval", "0.01"),
            module=module,
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert out.stdout.startswith("sent 2 heartbeats from 2 amphorae")
    assert len(parse(rx.wait_for(2))) == 2


@pytest.mark.parametrize("module", ["amphora_heartbeat"])
def test_cli_without_key_fails_clearly(receivers: list[Receiver], module: str) -> None:
    """No key anywhere: a non-zero exit and a message saying how to give one."""
    env = {k: v for k, v in os.environ.items() if k != "AMPHORA_HEARTBEAT_KEY"}
    out = subprocess.run(
        _cli("--to", receivers[0].target, "--amphorae", "1", "--count", "1", module=module),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode != 0
    assert "a key is needed" in out.stderr
    assert "Traceback" not in out.stderr


def test_cli_stops_cleanly_on_sigterm(receivers: list[Receiver]) -> None:
    """SIGTERM ends an endless run with exit status 0 and a final summary."""
    env = dict(os.environ, AMPHORA_HEARTBEAT_KEY=KEY)
    proc = subprocess.Popen(
        _cli(
            "--to",
            receivers[0].target,
            "--amphorae",
            "2",
            "--rate",
            "100",
            "--progress-interval",
            "0.01",
            "--json",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("sending from 2 amphorae to ")
        assert "until stopped (Ctrl-C or SIGTERM" in first
        # Readiness: the first progress line means the send loop is running.
        assert proc.stderr.readline().startswith("sent ")
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert json.loads(out)["sent"] >= 0


def test_a_real_getter_accepts_every_fleet_heartbeat() -> None:
    """A UDPStatusGetter on 127.0.0.1 accepts all the fleet sends, rejecting none."""
    from amphora_heartbeat.getter import UDPStatusGetter

    seen: list[Heartbeat] = []
    with UDPStatusGetter(
        KEY,
        "127.0.0.1",
        0,
        timeout=0.05,
        rcvbuf=1 << 20,
        health_handler=lambda h, s: seen.append(h),
    ) as getter:
        host, port = getter.address
        summary = run_fleet(
            [f"{host}:{port}"], KEY, amphorae=5, rate=1000, count=20, codec=Codec.ZSTD, silent=0.2
        )
        deadline = time.monotonic() + DEADLINE
        while len(seen) < summary.sent and time.monotonic() < deadline:
            getter.check()
        counters = getter.counters
    assert counters["accepted"] == counters["received"] == 20
    assert {h.amphora_id for h in seen} == {a.amphora_id for a in make_fleet(5)}
    assert all(h.recv_time is not None and h.version == 3 for h in seen)


def test_each_amphora_sends_from_one_socket_of_the_pool() -> None:
    """With sources=4 the fleet uses four source ports, one per amphora throughout."""
    import socket as socket_module

    from amphora_heartbeat.envelope import unwrap_envelope

    with socket_module.socket(socket_module.AF_INET, socket_module.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(DEADLINE)
        target = f"127.0.0.1:{rx.getsockname()[1]}"
        summary = run_fleet([target], KEY, amphorae=8, count=32, rate=2000, sources=4)
        ports: dict[str, set[int]] = {}
        for _ in range(summary.sent):
            data, (_, port) = rx.recvfrom(65536)
            ports.setdefault(unwrap_envelope(data, KEY)["id"], set()).add(port)
    assert len(ports) == 8
    assert all(len(p) == 1 for p in ports.values())
    assert len({p for ps in ports.values() for p in ps}) == 4
    with pytest.raises(ValueError, match="sources"):
        run_fleet([target], KEY, amphorae=1, count=1, sources=0)
