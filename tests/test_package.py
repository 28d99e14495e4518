"""The package's public surface: re-exports resolve, the README's Python example runs, sampling stays torch-free."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import servegen_ml

REPO = Path(__file__).resolve().parents[1]
NEURAL_CHECKPOINTS = sorted(p.parent for p in (REPO / "checkpoints").glob("*/neural/manifest.json"))


def test_every_public_name_resolves():
    assert set(servegen_ml.__all__) == set(servegen_ml._EXPORTS) | {"__version__"}
    for name in servegen_ml.__all__:
        assert getattr(servegen_ml, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        _ = servegen_ml.missing


def test_importing_the_package_loads_only_the_core():
    code = (
        "import sys, servegen_ml; loaded = [m for m in sys.modules if m.startswith('servegen_ml.')];"
        "assert all(m.startswith('servegen_ml.core') for m in loaded), loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


@pytest.mark.parametrize("checkpoint", NEURAL_CHECKPOINTS, ids=lambda p: p.parent.name)
def test_sampling_a_shipped_neural_checkpoint_never_imports_torch(checkpoint):
    code = (
        "import sys; import numpy as np; from servegen_ml import GenerationSpec, load_generator;"
        f"g = load_generator({str(checkpoint)!r});"
        "t = g.sample(GenerationSpec.from_values(duration_s=30, seed=1), np.random.default_rng(1));"
        "assert len(t) > 0;"
        "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'sampling imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_readme_python_example_runs(shared_traces, tmp_path):
    readme = (REPO / "README.md").read_text()
    block = re.search(r"## From Python\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert len(re.findall(r"^(?:import|from) ", block, re.M)) == 2, "the example needs two imports"
    trace = shared_traces / "mooncake-fast25" / "conversation_trace.jsonl"
    block = block.replace("../shared/data/traces/mooncake-fast25/conversation_trace.jsonl", str(trace))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "nll_total" in out.stdout and (tmp_path / "my-checkpoint" / "manifest.json").is_file()


def test_a_shipped_checkpoint_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
    from servegen_ml.generators import resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    shipped = REPO / "checkpoints" / "multimodal" / "parametric"
    assert resolve_checkpoint("multimodal/parametric") == shipped
    assert resolve_checkpoint("checkpoints/multimodal/parametric") == shipped
    local = tmp_path / "multimodal" / "parametric"
    local.mkdir(parents=True)
    assert resolve_checkpoint("multimodal/parametric") == Path("multimodal/parametric")  # a local path wins
    assert resolve_checkpoint("nowhere/parametric") == Path("nowhere/parametric")  # reported by the loader


def test_the_wheel_carries_the_configs_and_the_shipped_checkpoints(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("servegen_ml-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")}
    checkpoints = {p.relative_to(REPO).as_posix() for p in (REPO / "checkpoints").rglob("*") if p.is_file()}
    assert configs and checkpoints
    assert {f"servegen_ml/_bundled/{name}" for name in configs | checkpoints} <= names
