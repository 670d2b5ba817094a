"""Workers on one address tell each other their lag and losses before a stale check."""

from __future__ import annotations

from pathlib import Path

import _pg
import pytest

from amphora_heartbeat.manager import HealthManager
from amphora_heartbeat.manager.peers import (
    ENVIRONMENT,
    PeerBoard,
    PeerNews,
    make_board,
    remove_board,
)
from amphora_heartbeat.models import Heartbeat
from amphora_heartbeat.store import PostgresStore, SQLiteStore
from amphora_heartbeat.testing import make_fleet

pg_server = _pg.pg_server
pg_dsn = _pg.pg_dsn
db_url = _pg.db_url
store = _pg.store

AnyStore = SQLiteStore | PostgresStore
T0 = 1_800_000_000.0


@pytest.fixture
def boards(tmp_path: Path) -> list[PeerBoard]:
    path = str(tmp_path / "board")
    PeerBoard.create(path, 3)
    made = [PeerBoard(path, i, 3) for i in range(3)]
    yield made  # type: ignore[misc]
    for board in made:
        board.close()


def test_a_board_with_no_news_reports_no_lag_and_no_loss(boards: list[PeerBoard]) -> None:
    assert boards[0].read(T0, stale_after=60) == PeerNews()


def test_the_lag_is_the_oldest_pending_heartbeat_of_the_slowest_peer(
    boards: list[PeerBoard],
) -> None:
    boards[1].publish(T0 - 1, oldest_pending=T0 - 20, lost_at=None)
    boards[2].publish(T0 - 1, oldest_pending=T0 - 5, lost_at=None)
    assert boards[0].read(T0, stale_after=60).lag == pytest.approx(20)


def test_a_peer_with_nothing_pending_may_have_fallen_behind_since_it_wrote(
    boards: list[PeerBoard],
) -> None:
    boards[1].publish(T0 - 3, oldest_pending=None, lost_at=None)
    assert boards[0].read(T0, stale_after=60).lag == pytest.approx(3)


def test_a_worker_does_not_read_its_own_slot(boards: list[PeerBoard]) -> None:
    boards[0].publish(T0 - 1, oldest_pending=T0 - 30, lost_at=T0 - 2)
    assert boards[0].read(T0, stale_after=60) == PeerNews()
    assert boards[1].read(T0, stale_after=60) == PeerNews(pytest.approx(30), T0 - 2)


def test_the_last_loss_of_any_peer_is_reported(boards: list[PeerBoard]) -> None:
    boards[1].publish(T0 - 1, oldest_pending=None, lost_at=T0 - 9)
    boards[2].publish(T0 - 1, oldest_pending=None, lost_at=T0 - 4)
    assert boards[0].read(T0, stale_after=60).lost_at == T0 - 4


def test_a_slot_not_written_for_a_while_is_a_dead_workers_and_ignored(
    boards: list[PeerBoard],
) -> None:
    boards[1].publish(T0 - 61, oldest_pending=T0 - 100, lost_at=T0 - 61)
    assert boards[0].read(T0, stale_after=60) == PeerNews()


def test_the_environment_names_the_board(tmp_path: Path) -> None:
    path = str(tmp_path / "board")
    PeerBoard.create(path, 2)
    assert PeerBoard.from_environ({}) is None
    board = PeerBoard.from_environ({ENVIRONMENT: PeerBoard.environ_value(path, 1, 2)})
    assert board is not None
    assert (board.index, board.count) == (1, 2)
    board.close()
    with pytest.raises(ValueError, match="index 2"):
        PeerBoard(path, 2, 2)


def _silent_amphora(store: AnyStore) -> str:
    """Return an amphora last heard at T0 (committed), in a fresh fleet."""
    (amp,) = make_fleet(1, seed=11)
    store.add_fleet([amp])
    m = HealthManager(None, store, heartbeat_timeout=10, started=T0 - 100)
    m.submit(Heartbeat.from_dict(amp.message(), recv_time=T0))
    m.step(T0)
    m.close()
    return amp.amphora_id


def test_a_lagging_peer_delays_the_failover_by_its_lag(
    store: AnyStore, boards: list[PeerBoard]
) -> None:
    """The peer may hold a newer heartbeat of the amphora: silence counts from its lag on."""
    amphora = _silent_amphora(store)
    failed: list[str] = []
    m = HealthManager(
        None, store, heartbeat_timeout=10, started=T0 - 100, failover=failed.append,
        health_check_interval=1, peers=boards[0],
    )  # fmt: skip
    boards[1].publish(T0 + 11, oldest_pending=T0 + 4, lost_at=None)  # 8 s behind at T0 + 12
    m.step(T0 + 12)
    assert m.wait_failovers(30)
    assert failed == []
    # The peer caught up: silent for 10 s plus what the peer may still hold (0.5 s).
    boards[1].publish(T0 + 12.5, oldest_pending=None, lost_at=None)
    m.step(T0 + 13)
    assert m.wait_failovers(30)
    assert failed == [amphora]
    m.close()


def test_a_peers_loss_holds_failovers_for_a_timeout(
    store: AnyStore, boards: list[PeerBoard]
) -> None:
    amphora = _silent_amphora(store)
    failed: list[str] = []
    m = HealthManager(
        None, store, heartbeat_timeout=10, started=T0 - 100, failover=failed.append,
        health_check_interval=1, peers=boards[0],
    )  # fmt: skip
    boards[2].publish(T0 + 20, oldest_pending=None, lost_at=T0 + 15)
    m.step(T0 + 20)
    assert m.wait_failovers(30)
    assert failed == []  # held until T0 + 25
    boards[2].publish(T0 + 25.5, oldest_pending=None, lost_at=T0 + 15)
    m.step(T0 + 26)
    assert m.wait_failovers(30)
    assert failed == [amphora]
    m.close()


def test_a_worker_publishes_its_own_lag_at_each_check(
    store: AnyStore, boards: list[PeerBoard]
) -> None:
    (amp,) = make_fleet(1, seed=12)
    store.add_fleet([amp])
    m = HealthManager(None, store, heartbeat_timeout=10, started=T0, peers=boards[0])
    m.step(T0)  # nothing waits
    assert boards[1].read(T0 + 1, stale_after=60) == PeerNews(pytest.approx(1), None)
    m.close()


def test_a_board_made_in_its_own_folder_is_removed_with_it() -> None:
    path = make_board(2)
    board = PeerBoard(path, 0, 2)
    board.publish(T0, oldest_pending=None, lost_at=None)
    other = PeerBoard(path, 1, 2)
    assert other.read(T0, stale_after=60) == PeerNews()
    board.close()
    other.close()
    remove_board(path)
    assert not Path(path).parent.exists()
