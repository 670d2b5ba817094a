"""Decompression bombs: valid-HMAC envelopes inflating to 100 MiB are refused in bounded memory.

Peak memory is read as the resident set size (ru_maxrss) of a fresh subprocess,
because tracemalloc does not see zstandard's C allocations.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from amphora_heartbeat import get_hmac

KEY = "insecure"
BOMB_SIZE = 100 << 20  # bytes a bomb inflates to
CHUNK = b"0" * (1 << 20)
# The default cap is 1 MiB; allow generously for buffers and allocator slack,
# still far below the 100 MiB a bomb would take.
MAX_GROWTH = 16 << 20


def _zlib_bomb() -> bytes:
    co = zlib.compressobj(9)
    return b"".join(co.compress(CHUNK) for _ in range(BOMB_SIZE >> 20)) + co.flush()


def _zstd_declared_bomb() -> bytes:
    co = zstandard.ZstdCompressor().compressobj(size=BOMB_SIZE)
    frame = b"".join(co.compress(CHUNK) for _ in range(BOMB_SIZE >> 20)) + co.flush()
    assert zstandard.get_frame_parameters(frame).content_size == BOMB_SIZE
    return frame


def _zstd_streamed_bomb() -> bytes:
    # compressobj without a size writes no content size: the receiver cannot
    # check a declaration and must bound the inflation itself.
    co = zstandard.ZstdCompressor().compressobj()
    frame = b"".join(co.compress(CHUNK) for _ in range(BOMB_SIZE >> 20)) + co.flush()
    assert zstandard.get_frame_parameters(frame).content_size == (1 << 64) - 1
    return frame


BOMBS: dict[str, Callable[[], bytes]] = {
    "zlib": _zlib_bomb,
    "zstd-declared-size": _zstd_declared_bomb,
    "zstd-streamed": _zstd_streamed_bomb,
}

# Each child reports its peak RSS (KiB on Linux) after import and after the work.
_CHILD = """
import json, resource, sys
from pathlib import Path
import amphora_heartbeat
from amphora_heartbeat import HeartbeatError, unwrap_envelope
mode, path, key = sys.argv[1], sys.argv[2], sys.argv[3]
envelope = Path(path).read_bytes() if path else b""
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
outcome = "none"
if mode == "unwrap":
    try:
        unwrap_envelope(envelope, key)
        outcome = "accepted"
    except HeartbeatError as exc:
        outcome = exc.reason
elif mode == "unbounded":
    import zlib
    outcome = str(len(zlib.decompress(envelope[:-64])))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before": before, "after": after, "outcome": outcome}))
"""


def _run_child(mode: str, path: Path | None) -> dict[str, object]:
    # Run outside the source tree so the child imports the same package as
    # the tests (the installed one), not whatever sits in the working directory.
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path) if path else "", KEY],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(sys.executable).parent,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def baseline_kib() -> int:
    """Return the peak RSS, in KiB, of a subprocess that only imports the library."""
    result = _run_child("import", None)
    assert result["outcome"] == "none"
    return int(result["after"])  # type: ignore[call-overload]


def _signed_file(tmp_path: Path, payload: bytes) -> Path:
    path = tmp_path / "bomb.bin"
    path.write_bytes(payload + get_hmac(payload, KEY))
    return path


@pytest.mark.parametrize("make", list(BOMBS.values()), ids=list(BOMBS))
def test_bomb_is_too_large_in_bounded_memory(
    make: Callable[[], bytes], tmp_path: Path, baseline_kib: int
) -> None:
    """A valid-HMAC envelope inflating to 100 MiB is too_large, with peak RSS far below 100 MiB."""
    path = _signed_file(tmp_path, make())
    result = _run_child("unwrap", path)
    assert result["outcome"] == "too_large"
    growth = (int(result["after"]) - baseline_kib) * 1024  # type: ignore[call-overload]
    assert growth < MAX_GROWTH, f"peak RSS grew by {growth / (1 << 20):.1f} MiB"


def test_rss_measurement_sees_a_real_inflation(tmp_path: Path) -> None:
    """Control: inflating the zlib bomb without a cap shows ~100 MiB, so the check can fail."""
    path = _signed_file(tmp_path, _zlib_bomb())
    result = _run_child("unbounded", path)
    assert result["outcome"] == str(BOMB_SIZE)
    # The child's own reading before inflating, not the separate baseline
    # process: the control must not depend on two processes' start-up sizes.
    growth = (int(result["after"]) - int(result["before"])) * 1024  # type: ignore[call-overload]
    assert growth > BOMB_SIZE * 0.9
