"""Tests of amphora_heartbeat.bench.manager: a tiny run end to end (figures are not asserted)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
from pathlib import Path

import pytest

from amphora_heartbeat.bench import manager as bench_manager
from amphora_heartbeat.bench import measure as bench_measure


def test_a_tiny_benchmark_runs_and_reports_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bench manager` fills the database, measures each rate and the double rate, as JSON."""
    db = f"sqlite:///{tmp_path / 'bench.db'}"
    argv = ["--db", db, "--amphorae", "40", "--rates", "100", "--duration", "1", "--warmup",
            "0.2", "--double-duration", "1", "--min-timeout", "0.5", "--json"]  # fmt: skip
    assert bench_manager.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["engine"] == "SQLite"
    (run,) = report["runs"]
    for key in ("committed_per_s", "p99_s", "lost_share", "failovers", "sustained",
                "cpu_s_per_1000", "tick_mean_s", "rss_mib"):  # fmt: skip
        assert key in run
    assert run["rss_mib"] > 1
    if report["best_sustained_rate"] is not None:
        assert report["double_rate"]["heartbeat_timeout"] >= 0.5


def test_the_benchmark_refuses_a_database_with_another_fleet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The benchmark reuses its own fleet, and refuses a database holding another one."""
    db = f"sqlite:///{tmp_path / 'other.db'}"
    argv = ["--db", db, "--amphorae", "3", "--rates", "1000000", "--duration", "0.3",
            "--warmup", "0"]  # fmt: skip
    for _ in range(2):  # the second run reuses the fleet already there
        assert bench_manager.main(argv) == 0
    with pytest.raises(SystemExit, match="another fleet"):
        bench_manager.main(["--db", db, "--amphorae", "5", "--seed", "9"])
    assert "NOT sustained" in capsys.readouterr().out  # a million per second is not


def test_two_workers_and_two_engines_in_one_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--workers 1,2` with two databases reports every engine and worker count, in order."""
    a, b = (f"sqlite:///{tmp_path / name}" for name in ("a.db", "b.db"))
    argv = ["--db", a, "--db", b, "--workers", "1,2", "--amphorae", "30", "--rates", "60",
            "--duration", "0.5", "--warmup", "0.2", "--double-duration", "0.5",
            "--min-timeout", "0.5", "--json"]  # fmt: skip
    assert bench_manager.main(argv) == 0
    reports = json.loads(capsys.readouterr().out)
    assert [(r["engine"], r["workers"]) for r in reports] == [
        ("SQLite", 1), ("SQLite", 2), ("SQLite", 1), ("SQLite", 2)
    ]  # fmt: skip
    assert all(r["runs"][0]["committed_per_s"] > 0 for r in reports)


def test_amphorae_takes_a_list_of_fleet_sizes() -> None:
    """`--amphorae 10000,100000` is two fleet sizes; --scale and --quick pick their own."""

    def plan(*argv: str) -> bench_manager._Plan:
        return bench_manager._Plan.from_args(
            bench_manager._parser().parse_args(["--db", "x", *argv])
        )

    assert plan("--amphorae", "10000,100000").sizes == [10_000, 100_000]
    assert plan("--amphorae", "7").sizes == [7]
    assert plan().sizes == [10_000]
    assert plan("--quick").sizes == [2_000]
    scale = plan("--scale")
    assert (scale.sizes, scale.rates, scale.scale) == ([10_000, 100_000], [2000.0], True)
    assert plan("--scale", "--quick").sizes == [2_000, 20_000]
    assert plan("--scale", "--rates", "100,200", "--amphorae", "5,9").rates == [100.0, 200.0]


@pytest.mark.parametrize("sizes", ["0", "10,0", "10,,20", "ten", "10.5"])
def test_amphorae_refuses_what_is_not_a_list_of_sizes(
    sizes: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A size below 1 or not a whole number is a usage error naming the option."""
    with pytest.raises(SystemExit) as exited:
        bench_manager._parser().parse_args(["--db", "x", "--amphorae", sizes])
    assert exited.value.code == 2
    assert "--amphorae" in capsys.readouterr().err


def test_a_larger_fleet_of_the_same_seed_grows_the_database(tmp_path: Path) -> None:
    """The database holding a smaller fleet of the seed gets the rest; a smaller one adds none."""
    from amphora_heartbeat.store import open_store

    db = f"sqlite:///{tmp_path / 'grow.db'}"
    for size, held in ((3, 3), (7, 7), (5, 7)):
        bench_measure.prepare(db, size, 0)
        store = open_store(db)
        assert store.execute("SELECT COUNT(*) FROM amphora")[0][0] == held
        store.close()
    with pytest.raises(SystemExit, match="another fleet"):
        bench_measure.prepare(db, 9, 1)


class _Ended:
    """A fleet generator process that has ended with ``exitcode``."""

    def __init__(self, exitcode: int) -> None:
        self.exitcode = exitcode

    def is_alive(self) -> bool:
        return False


class _Running(_Ended):
    """A fleet generator process still running (and saying nothing)."""

    def is_alive(self) -> bool:
        return True


def test_a_fleet_generator_that_fails_or_hangs_is_one_clear_error() -> None:
    """Its error, its end before it was ready, and its silence past the timeout each say so."""
    out: queue.Queue[tuple[str, object]] = queue.Queue()
    out.put(("error", "MemoryError: "))
    with pytest.raises(RuntimeError, match="the fleet generator failed: MemoryError"):
        bench_measure._await(_Running(0), out, "ready", 60, "ready")
    with pytest.raises(RuntimeError, match=r"ended \(exit status -9\) before it was ready"):
        bench_measure._await(_Ended(-9), out, "ready", 60, "ready")
    with pytest.raises(RuntimeError, match="was not ready after 0 s"):
        bench_measure._await(_Running(0), out, "ready", 0, "ready")
    out.put(("ready", None))
    out.put(("done", {"sent": 1}))
    assert bench_measure._await(_Ended(0), out, "ready", 60, "ready") is None
    assert bench_measure._await(_Ended(0), out, "done", 60, "done") == {"sent": 1}


def test_the_generator_ready_timeout_grows_with_the_fleet() -> None:
    """A minute, plus half a millisecond an amphora and two a packet to build."""
    assert bench_measure._ready_timeout(0, 0) == 60
    assert bench_measure._ready_timeout(100_000, 400_000) == pytest.approx(60 + 50 + 800)


def test_a_failed_run_is_one_error_line_and_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """When the fleet generator fails, the benchmark says so in one line, no traceback."""

    def failing(*args: object, **kwargs: object) -> dict[str, object]:
        raise bench_measure.BenchFailure("the fleet generator was not ready after 61 s")

    monkeypatch.setattr(bench_manager, "measure", failing)
    db = f"sqlite:///{tmp_path / 'fail.db'}"
    assert bench_manager.main(["--db", db, "--amphorae", "3", "--scale"]) == 1
    err = capsys.readouterr().err
    assert err == "error: the fleet generator was not ready after 61 s\n"


def test_a_tiny_scale_run_reports_each_size_and_the_growth(tmp_path: Path) -> None:
    """`--scale --amphorae 50,100` (a real process) reports every figure per size, as JSON."""
    argv = [sys.executable, "-m", "amphora_heartbeat.bench", "manager",
            "--db", f"sqlite:///{tmp_path / 'scale.db'}", "--scale", "--amphorae", "50,100",
            "--rates", "100", "--duration", "1", "--warmup", "0.5", "--json"]  # fmt: skip
    result = subprocess.run(
        argv, check=False, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["engine"], report["scale"]) == ("SQLite", True)
    assert [r["amphorae"] for r in report["runs"]] == [50, 100]
    for run in report["runs"]:
        for key in ("committed_per_s", "p99_s", "tick_p50_s", "tick_p99_s", "rss_end_mib",
                    "cpu_s_per_1000", "failovers", "amphorae_heard", "heartbeats_per_tick",
                    "heartbeat_timeout", "fleet_variants", "load_average"):  # fmt: skip
            assert key in run
        assert 0 < run["amphorae_heard"] <= run["amphorae"]
        assert run["rss_end_mib"] > 1
        assert run["heartbeat_timeout"] >= 3.0  # the least, --min-timeout
    (growth,) = report["growth"]
    assert (growth["from_amphorae"], growth["to_amphorae"], growth["rate"]) == (50, 100, 100.0)
    for key in ("rss_extra_bytes", "rss_bytes_per_extra_amphora",
                "rss_bytes_per_extra_amphora_heard"):  # fmt: skip
        assert key in growth
    table = [bench_manager._scale_row(r) for r in report["runs"]]
    assert all(line.split()[:3] == [f"{r['amphorae']}", f"{r['amphorae_heard']}", "100"]
               for line, r in zip(table, report["runs"], strict=True))  # fmt: skip
    assert "per extra amphora heard" in bench_manager._growth_line(growth)
