"""Tests of amphora_heartbeat.bench.manager: a tiny run end to end (figures are not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amphora_heartbeat.bench import manager as bench_manager


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
