"""Tests of the benchmark's building blocks, with tiny counts; no timing is asserted."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from amphora_heartbeat import bench
from amphora_heartbeat.bench import receive
from amphora_heartbeat.envelope import Codec, Digest, wrap_envelope
from amphora_heartbeat.testing import build_message


@pytest.fixture(scope="module")
def packets() -> bench.Packets:
    return bench.Packets.make(amphorae=20)


def test_reference_loops_decode_what_the_library_wraps() -> None:
    """The floor and the restated baseline decode hex envelopes; the baseline also raw ones."""
    message = build_message(seed=3)
    hex_packet = wrap_envelope(message, bench.KEY)
    raw_packet = wrap_envelope(message, bench.KEY, digest=Digest.RAW)
    assert bench.floor_step(hex_packet) == message
    assert bench.lean_floor_step(hex_packet) == message
    assert bench.baseline_unwrap(hex_packet) == message
    assert bench.baseline_unwrap(raw_packet) == message


def test_baseline_refuses_a_bad_hmac() -> None:
    """The restated baseline checks the trailer: a wrong key is refused."""
    packet = wrap_envelope(build_message(), b"another key")
    with pytest.raises(ValueError, match="HMAC"):
        bench.baseline_unwrap(packet)


def test_packets_cover_every_encoding(packets: bench.Packets) -> None:
    """The traffic has one packet per amphora in each codec and trailer."""
    assert set(packets.by_encoding) == {(c, d) for c in Codec for d in Digest}
    assert all(len(p) == 20 for p in packets.by_encoding.values())
    assert len(packets.messages) == 20


def test_result_median_and_spread() -> None:
    """Median and spread are computed from the recorded rates."""
    result = bench.Result("x", "y", rates=[10.0, 30.0, 20.0])
    assert result.median == 20.0
    assert result.spread == pytest.approx(1.0)
    assert result.to_dict()["runs_per_s"] == [10.0, 30.0, 20.0]
    empty = bench.Result("e", "nothing")
    assert empty.median == 0.0
    assert empty.spread == 0.0
    assert empty.to_dict()["min_per_s"] is None


def test_target_evaluation() -> None:
    """A target compares medians, by wall clock and by CPU time: met, missed, or not measured."""
    results = {
        "a": bench.Result("a", "", rates=[8.0], cpu_rates=[10.0]),
        "b": bench.Result("b", "", rates=[10.0], cpu_rates=[10.0]),
    }
    met = bench.Target("t", "a", "b", 0.8, ">= 0.8x").evaluate(results)
    assert (met["wall_ratio"], met["wall_met"], met["cpu_met"]) == (0.8, True, True)
    missed = bench.Target("t", "a", "b", 0.9, ">= 0.9x").evaluate(results)
    assert (missed["wall_met"], missed["cpu_met"]) == (False, True)
    missing = bench.Target("t", "a", "zzz", 1.0, "> 1x").evaluate(results)
    assert missing["wall_ratio"] is None
    assert missing["cpu_met"] is None


def test_rounds_are_interleaved() -> None:
    """Each round runs every case once, in order, before the next round starts."""
    order: list[str] = []

    def case(name: str) -> bench.Case:
        def run() -> bench.Timing:
            order.append(name)
            return (0, 0.0, 0.0) if name == "idle" else (10, 0.5, 0.25)

        return bench.Case(name, name, run)

    results = bench.run_rounds([case("a"), case("b"), case("idle")], 3)
    assert order == ["a", "b", "idle"] * 3
    assert results["a"].rates == [20.0, 20.0, 20.0]
    assert results["a"].cpu_rates == [40.0, 40.0, 40.0]
    assert results["idle"].rates == []
    assert len(results["idle"].notes) == 3


def test_memory_cases_run(packets: bench.Packets) -> None:
    """Every in-memory case processes packets and reports a positive count."""
    for case in receive.memory_cases(packets, passes=1):
        ops, wall, cpu = case.run()
        assert ops == 20, case.name
        assert wall > 0
        assert cpu >= 0


def test_socket_cases_run_with_a_sender_in_another_process(packets: bench.Packets) -> None:
    """The socket cases receive from a fleet sender process and record its summary."""
    rings = {codec: receive.rings(packets.fleet, codec, 1) for codec in (Codec.ZLIB, Codec.ZSTD)}
    settings = bench.SocketSettings(max_seconds=0.05, paced_rate=500.0, paced_seconds=0.1, idle=0.3)
    cases, senders = receive.socket_cases(packets, rings, settings)
    assert [c.name for c in cases] == [
        "floor.udp",
        "check.max.zlib",
        "check.max.zstd",
        "check.paced",
    ]
    for case in cases:
        ops, _, _ = case.run()
        assert ops > 0, case.name
        (summary,) = senders[case.name]
        assert summary["sent"] > 0
        if "lost" in summary:
            assert summary["accepted"] + summary["lost"] >= summary["sent"] - 1


def test_memory_measurement_reports_rss(packets: bench.Packets) -> None:
    """The memory check reads RSS before and after and counts every packet."""
    memory = bench.measure_memory(packets, 200)
    assert memory["packets"] == 200
    assert memory["rss_before_bytes"] > 0
    assert math.isfinite(memory["growth_bytes_per_packet"])
    assert bench.rss_bytes() > 0


def test_profile_names_the_hot_path(packets: bench.Packets) -> None:
    """The profile report names the unwrap and parse functions."""
    report = bench.profile(packets, 50, top=80)
    assert "unwrap" in report
    assert "from_dict" in report or "_parse" in report


def test_machine_facts() -> None:
    """The machine facts name CPUs, Python and the codec versions."""
    facts = bench.machine_facts()
    assert facts["nproc"] >= 1
    assert facts["python"].count(".") == 2
    assert facts["zstandard"]


def test_manager_dispatch(capsys: pytest.CaptureFixture[str]) -> None:
    """`bench manager ARGS` hands ARGS to the manager benchmark's own parser."""
    with pytest.raises(SystemExit) as exited:
        bench.main(["manager", "--help"])
    assert exited.value.code == 0
    assert "--db" in capsys.readouterr().out


def test_rounds_below_three_are_refused() -> None:
    """Fewer than three rounds would make medians meaningless: a usage error."""
    with pytest.raises(SystemExit):
        bench.main(["--rounds", "2"])


def test_quick_json_run_in_a_subprocess() -> None:
    """The command runs end to end with tiny counts and prints one JSON report."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "amphora_heartbeat.bench", "--quick", "--json"),
            *("--amphorae", "50", "--passes", "1", "--memory-packets", "2000"),
            *("--socket-seconds", "0.05"),
            *("--paced-seconds", "0.1", "--rate", "1000", "--profile"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(out.stdout)
    assert report["settings"]["rounds"] == 3
    assert report["settings"]["amphorae"] == 50
    assert report["results"]["floor.memory"]["median_per_s"] > 0
    assert len(report["results"]["parse.hex.zlib"]["runs_per_s"]) == 3
    assert {t["target"] for t in report["targets"]} == {t.name for t in bench.TARGETS}
    assert report["memory"]["packets"] == 2000
    assert "floor.udp" in report["senders"]
    assert "function calls" in report["profile"]
    assert report["machine"]["nproc"] >= 1


def test_text_report_in_a_subprocess() -> None:
    """Without --json the command prints the table, the senders, memory and the targets."""
    out = subprocess.run(
        [
            *(sys.executable, "-m", "amphora_heartbeat.bench", "--quick"),
            *("--amphorae", "50", "--passes", "1", "--memory-packets", "1000"),
            *("--socket-seconds", "0.05", "--paced-seconds", "0.05", "--rate", "500"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "median/s" in out.stdout
    assert "sender check.paced" in out.stdout
    assert "memory: 1,000 packets through UDPStatusGetter.handle_datagram" in out.stdout
    assert "targets (ratios of medians):" in out.stdout
    assert "round 3/3" in out.stderr
