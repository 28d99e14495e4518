"""Hash spills: the pairs come back by partition in the order added, and no run leaves a file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from servegen_ml.trace.spill import HashSpill, repeated_rows

REPO = Path(__file__).resolve().parents[2]


def test_partitions_return_every_pair_sorted_by_key_in_the_order_added():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 5_000, dtype=np.uint64) * np.uint64(2)
    keys[::7] = keys[0]  # a repeated key keeps its rows in order
    spill = HashSpill()
    for start in range(0, len(keys), 333):  # chunks of unequal partition content
        spill.add(keys[start : start + 333], np.arange(start, min(start + 333, len(keys))))
    got = list(spill.partitions())
    all_keys = np.concatenate([k for k, _ in got])
    rows = np.concatenate([v for _, v in got])
    assert sorted(rows.tolist()) == list(range(len(keys)))
    assert (keys[rows] == all_keys).all()
    for k, v in got:
        assert (np.diff(k.astype(np.float64)) >= 0).all()
        same = np.r_[False, k[1:] == k[:-1]]
        assert (v[same] > v[np.flatnonzero(same) - 1]).all()
    repeat, first = repeated_rows(spill)
    assert repeat.tolist() == list(range(7, len(keys), 7)) and (first == 0).all()


def test_one_row_chunks_keep_a_compact_segment_table():
    spill = HashSpill()
    for i in range(3_000):
        spill.add(np.array([np.uint64(i) << np.uint64(50)]), np.array([i]))
    assert len(spill._segments) < 1_024
    assert sum(len(v) for _, v in spill.partitions()) == 3_000


def _open_files_in(pid: int, directory: Path) -> list[str]:
    """Files the process holds open in ``directory`` (unlinked ones too: "name (deleted)")."""
    try:
        targets = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [t for t in targets if t.startswith(f"{directory}/")]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to see the open spill file")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_killed_run_leaves_no_spill_behind(tmp_path, sig):
    rows = [f"{i * 0.01:.2f},c{i % 5},r{i},{10 + i % 90},{1 + i % 7}\n" for i in range(300_000)]
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,client_id,request_id,input_tokens,output_tokens\n" + "".join(rows))
    spill_dir = tmp_path / "tmp"
    spill_dir.mkdir()
    env = {**os.environ, "TMPDIR": str(spill_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "servegen_ml.cli", "validate", f"data.path={trace}", "chunk_rows=50"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    # Held open and already unlinked (where the OS cannot create it nameless, tempfile creates
    # then unlinks it at once: a poll may land in between, so wait for the unlinked state).
    while (
        not ((held := _open_files_in(proc.pid, spill_dir)) and all("(deleted)" in t for t in held))
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    assert held, "the run ended before spilling (make the trace longer)"
    assert all("(deleted)" in t for t in held)  # unlinked while in use
    proc.send_signal(sig)
    proc.wait(60)
    assert proc.returncode in {signal.SIGTERM: (143,), signal.SIGINT: (130,), signal.SIGKILL: (-9,)}[sig]
    assert list(spill_dir.iterdir()) == []
