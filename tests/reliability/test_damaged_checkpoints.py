"""Every kind of checkpoint damage is exit 2 with a message naming the file; nothing is written."""

from __future__ import annotations

import shutil

import pytest

from servegen_ml.cli import main
from servegen_ml.core.errors import CheckpointError
from servegen_ml.generators.base import load_generator
from tests.reliability.damage import DAMAGES


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_damaged_checkpoint_is_refused_naming_the_file(name, tmp_path, capsys):
    source, damage, named_file = DAMAGES[name]
    checkpoint = tmp_path / "ck"
    shutil.copytree(source, checkpoint)
    damage(checkpoint)
    with pytest.raises(CheckpointError):
        load_generator(checkpoint)
    out = tmp_path / "w.parquet"
    code = main(["generate", f"checkpoint={checkpoint}", "duration_s=60", f"out={out}", "quiet=true"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert named_file in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".w.parquet*"))
    assert main(["inspect", f"checkpoint={checkpoint}"]) == 2


@pytest.mark.parametrize("source", ["parametric", "neural"])
def test_inspect_reports_a_sound_checkpoint(source, capsys):
    from tests.reliability.damage import NEURAL, PARAMETRIC

    checkpoint = {"parametric": PARAMETRIC, "neural": NEURAL}[source]
    assert main(["inspect", f"checkpoint={checkpoint}", "sample_s=30"]) == 0
    out = capsys.readouterr().out
    assert f"generator: {source}" in out and "sampled 30 s" in out and out.rstrip().endswith("ok")
