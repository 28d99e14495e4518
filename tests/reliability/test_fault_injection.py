"""Kill `generate` and `train` mid-run (SIGTERM, SIGKILL; subprocesses): the previous output stays
intact under its name, no partial output ever appears there, and SIGTERM leaves no temporary files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from servegen_ml.core.spec import GenerationSpec
from servegen_ml.export import meta_path
from servegen_ml.generators.base import checkpoint_digest, load_generator
from servegen_ml.trace.writers import write_trace
from tests.factories import synthetic_trace

REPO = Path(__file__).resolve().parents[2]
LANGUAGE = REPO / "checkpoints" / "language" / "parametric"


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "servegen_ml.cli", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(condition, process: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"finished before it could be interrupted: {process.communicate()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the run never reached the point to interrupt")
        time.sleep(0.005)


def _temp_files(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_generate_killed_while_writing_keeps_the_previous_output(sig, tmp_path):
    out = tmp_path / "w.jsonl"
    out.write_text("previous\n")
    meta_path(out).write_text("{}\n")
    process = _start(
        [
            "generate",
            f"checkpoint={LANGUAGE}",
            "duration_s=3600",
            "format=mooncake",
            f"out={out}",
            "quiet=true",
        ],
        tmp_path,
    )
    _wait_for(lambda: bool(_temp_files(tmp_path)), process)  # the output is being written
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    assert out.read_text() == "previous\n" and meta_path(out).read_text() == "{}\n"
    if sig == signal.SIGTERM:
        assert process.returncode == 143, err
        assert "terminated; no partial output" in err and "Traceback" not in err
        assert _temp_files(tmp_path) == []
    else:
        assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_train_killed_mid_training_keeps_the_previous_checkpoint(sig, tmp_path):
    data = tmp_path / "trace.parquet"
    write_trace(synthetic_trace(seed=0, duration_s=1800.0, n_clients=3), data)
    out = tmp_path / "ck"
    load_generator(LANGUAGE.parent.parent / "conversational" / "parametric").save(out)
    before = checkpoint_digest(out)
    runs = tmp_path / "runs"
    process = _start(
        [
            "train",
            f"data.path={data}",
            "model=neural",
            f"out={out}",
            "overwrite=true",
            "quiet=true",
            f"trainer.default_root_dir={runs}",
            "trainer.max_epochs=1000",
            "model.hidden=8",
            "model.embedding=4",
            "model.head_hidden=8",
            "model.chunk_len=16",
            "model.lanes=4",
        ],
        tmp_path,
    )
    _wait_for(lambda: any(runs.rglob("*")) if runs.exists() else False, process)  # Lightning is running
    time.sleep(1.0)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert checkpoint_digest(out) == before
    gen = load_generator(out)
    assert len(gen.sample(GenerationSpec.from_values(duration_s=60), np.random.default_rng(0)))
    if sig == signal.SIGTERM:
        assert process.returncode == 143, err[-2000:]
        assert _temp_files(tmp_path) == []
    else:
        assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("sigterm", [True, False])
def test_an_interrupt_while_the_conversation_heads_train_exits_like_any_interrupt(
    sigterm, tmp_path, monkeypatch, capsys
):
    # Lightning turns ^C and SIGTERM into SystemExit(1); the second Trainer of a neural fit (the
    # conversation heads) must hand the interrupt back as the first (the point process) does.
    import lightning as L

    from servegen_ml.cli import main
    from tests.factories import conversational_trace

    data = tmp_path / "trace.parquet"
    write_trace(conversational_trace(seed=0, duration_s=3_600.0), data)
    fit, calls = L.Trainer.fit, []

    def interrupted_second_fit(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            return fit(self, *args, **kwargs)
        from lightning.pytorch.trainer.states import TrainerStatus

        self.state.status = TrainerStatus.INTERRUPTED
        self._signal_connector.received_sigterm = sigterm
        raise SystemExit(1)

    monkeypatch.setattr(L.Trainer, "fit", interrupted_second_fit)
    out = tmp_path / "ck"
    args = ["train", f"data.path={data}", "model=neural", f"out={out}", "quiet=true"]
    args += ["trainer.max_epochs=1", "+trainer.max_steps=2", "trainer.min_steps=0"]
    args += ["trainer.default_root_dir=null", "model.hidden=8", "model.lanes=4", "model.chunk_len=16"]
    assert main(args) == (143 if sigterm else 130)
    assert len(calls) == 2 and not out.exists()
    # (Lightning's log handlers may still point at an earlier test's captured stream: the last line only.)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == f"{'terminated' if sigterm else 'interrupted'}; no partial output was left behind"


_ORPHAN_SCRIPT = """
import multiprocessing, sys, time
from servegen_ml.generators.stream import _exit_with_parent

def child(path):
    _exit_with_parent()
    open(path, "w").write("ready")
    time.sleep(600)

if __name__ == "__main__":
    ctx = multiprocessing.get_context("forkserver")
    p = ctx.Process(target=child, args=(sys.argv[1],))
    p.start()
    print(p.pid, flush=True)
    time.sleep(600)
"""


def test_a_generate_worker_ends_when_its_parent_is_killed(tmp_path):
    """A forkserver worker of a SIGKILLed generate would otherwise wait on its task queue forever."""
    script, ready = tmp_path / "parent.py", tmp_path / "ready"
    script.write_text(_ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(ready)], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    _wait_for(ready.exists, parent)
    parent.kill()
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and _alive(child_pid):
        time.sleep(0.1)
    assert not _alive(child_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False
