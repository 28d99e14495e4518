"""Outputs: nothing of the user's is deleted, unwritable outputs are exit 2 before the work, file and
sidecar are replaced together, and checkpoint files get ordinary permissions."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from servegen_ml.cli import main
from servegen_ml.core.errors import OutputError
from servegen_ml.export import export_trace, meta_path
from servegen_ml.generators.base import load_generator
from tests.reliability.bad_traces import good_frame
from tests.reliability.damage import NEURAL, PARAMETRIC

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def trace(tmp_path) -> Path:
    path = tmp_path / "trace.csv"
    good_frame().to_csv(path, index=False)
    return path


def _no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.rglob("*") if ".tmp" in p.name or p.name.endswith(".old")]


def test_train_refuses_a_folder_of_user_files(trace, tmp_path, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    assert main(["train", f"data.path={trace}", f"out={folder}"]) == 2
    assert "not a servegen-ml checkpoint" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "precious" and sorted(os.listdir(folder)) == ["notes.txt"]
    assert _no_temp_files(tmp_path)


def test_train_refuses_an_existing_file(trace, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep")
    assert main(["train", f"data.path={trace}", f"out={target}"]) == 2
    assert target.read_text() == "keep" and _no_temp_files(tmp_path)


def test_train_replaces_a_checkpoint_only_with_overwrite(trace, tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["train", f"data.path={trace}", f"out={out}", "model=naive"]) == 0
    assert main(["train", f"data.path={trace}", f"out={out}", "model=parametric"]) == 2
    assert "overwrite=true" in capsys.readouterr().err
    assert json.loads((out / "manifest.json").read_text())["generator"] == "naive"
    assert main(["train", f"data.path={trace}", f"out={out}", "model=parametric", "overwrite=true"]) == 0
    assert json.loads((out / "manifest.json").read_text())["generator"] == "parametric"
    assert (out / "metrics.json").is_file() and _no_temp_files(tmp_path)


def test_library_save_never_deletes_user_files(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with pytest.raises(OutputError):
        load_generator(PARAMETRIC).save(folder)
    assert (folder / "a.txt").read_text() == "x"


def test_saved_files_have_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        load_generator(NEURAL).save(tmp_path / "ck")
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "ck").iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}


@pytest.mark.parametrize(
    ("out", "expected"),
    [(".", "is a directory"), ("{tmp}", "is a directory"), ("{tmp}/file/w.parquet", "is a file")],
)
def test_generate_checks_the_output_before_sampling(out, expected, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    out = out.format(tmp=tmp_path)
    assert main(["generate", f"checkpoint={PARAMETRIC}", "duration_s=60", f"out={out}", "quiet=true"]) == 2
    assert expected in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_generate_refuses_an_unwritable_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["generate", f"checkpoint={PARAMETRIC}", "duration_s=60", f"out={locked / 'w.parquet'}"]) == 2
    assert "permission denied" in capsys.readouterr().err


def test_generate_refuses_when_the_disk_is_too_small(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(
        "servegen_ml.core.outputs.shutil.disk_usage",
        lambda path: shutil._ntuple_diskusage(10**9, 10**9, 1000),
    )
    out = tmp_path / "w.parquet"
    assert main(["generate", f"checkpoint={PARAMETRIC}", "duration_s=3600", f"out={out}", "quiet=true"]) == 2
    assert "GB free" in capsys.readouterr().err and not out.exists()


def test_file_too_large_is_exit_2_and_leaves_no_temp_file(tmp_path):
    out = tmp_path / "w.jsonl"

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    result = subprocess.run(
        [sys.executable, "-m", "servegen_ml.cli", "generate", f"checkpoint={PARAMETRIC}", "duration_s=600"]
        + [f"out={out}", "format=mooncake", "quiet=true"],
        cwd=REPO,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "File too large" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_size_limits_refuse_before_sampling(tmp_path, capsys):
    """Memory holds the blocks in flight, so a long span is refused only for disk space, a huge rate for memory."""
    out = tmp_path / "w.parquet"
    for extra, text in [
        (["duration_s=1e9"], "GB free; free some space"),
        (["duration_s=60", "rate=1e9"], "requests in memory at once"),
        (["duration_s=60", "clients=new:100000000"], "max_new_clients"),
    ]:
        assert main(["generate", f"checkpoint={PARAMETRIC}", f"out={out}", "quiet=true", *extra]) == 2
        assert text in capsys.readouterr().err
    assert not out.exists()


def test_export_replaces_file_and_sidecar_together(tmp_path):
    out = tmp_path / "w.jsonl"
    frames = [good_frame(n) for n in (50, 80)]
    errors = []

    def write(frame):
        try:
            for _ in range(10):
                export_trace(frame, out, "mooncake", meta={"rows_written": len(frame)})
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=write, args=(f,)) for f in frames]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = len(out.read_text().splitlines())
    assert json.loads(meta_path(out).read_text())["rows"] == rows
    assert _no_temp_files(tmp_path)


def test_failed_export_touches_neither_file(tmp_path):
    out = tmp_path / "w.parquet"
    export_trace(good_frame(), out)
    before = (out.read_bytes(), meta_path(out).read_bytes())
    bad = good_frame().assign(timestamp=float("nan"))
    with pytest.raises(ValueError):
        export_trace(bad, out)
    assert (out.read_bytes(), meta_path(out).read_bytes()) == before
    assert len(pd.read_parquet(out)) == len(good_frame()) and _no_temp_files(tmp_path)


def test_export_checks_free_space_for_its_block_ids(tmp_path, monkeypatch, capsys):
    frame = good_frame().assign(input_tokens=90_000_000)  # valid, but 175,782 block ids per row
    trace = tmp_path / "t.csv"
    frame.to_csv(trace, index=False)
    monkeypatch.setattr(
        "servegen_ml.core.outputs.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 0, 10**8)
    )
    out = tmp_path / "o.jsonl"
    assert main(["export", f"data.path={trace}", "format=mooncake", f"out={out}"]) == 2
    assert "GB free" in capsys.readouterr().err and not out.exists()
