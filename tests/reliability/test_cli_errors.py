"""Exit codes: 2 for the project's input errors (naming the key or file), 1 with a bug report for
anything else, and no ``sys.exit`` outside the CLI."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from servegen_ml.cli import main
from tests.reliability.damage import PARAMETRIC

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        (["duration_s=abc"], "duration_s"),
        (["duration_s=60", "seed=abc"], "seed"),
        (["duration_s=60", "seed=-1"], "seed"),
        (["duration_s=60", "seed=1.5"], "seed"),
        (["duration_s=-5"], "duration_s"),
        (["duration_s=60", "start_s=x"], "start_s"),
        (["duration_s=60", "rate=fast"], "rate"),
        (["duration_s=60", "clients=new:x"], "clients"),
        (["duration_s=60", "format=pdf"], "format"),
    ],
)
def test_bad_generate_values_name_their_key(extra, key, tmp_path, capsys):
    assert main(["generate", f"checkpoint={PARAMETRIC}", f"out={tmp_path / 'w.parquet'}", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {key}=") and "Traceback" not in err


def test_missing_mandatory_option_names_it(capsys):
    assert main(["validate"]) == 2
    err = capsys.readouterr().err
    assert "data.path" in err and "Traceback" not in err


def test_a_bug_is_exit_1_with_a_report_and_log(monkeypatch, capsys):
    import servegen_ml.commands.validate as validate

    def broken(cfg):
        raise KeyError("internal")  # a bug, not bad input: once mapped to exit 2

    monkeypatch.setattr(validate, "run", broken)
    assert main(["validate", "data.path=x"]) == 1
    err = capsys.readouterr().err
    assert "this is a bug in servegen-ml" in err
    log = Path(re.search(r"traceback in (\S+)", err).group(1))
    assert "KeyError: 'internal'" in log.read_text()
    log.unlink()
    assert main(["validate", "data.path=x", "--verbose"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_plain_value_error_is_a_bug_not_bad_input(monkeypatch, capsys):
    import servegen_ml.commands.validate as validate

    monkeypatch.setattr(validate, "run", lambda cfg: int("x"))
    assert main(["validate", "data.path=x", "--verbose"]) == 1  # --verbose: no log file left behind
    assert "ValueError: invalid literal" in capsys.readouterr().err


def test_no_sys_exit_outside_the_cli():
    offenders = [
        str(p.relative_to(REPO))
        for p in (REPO / "servegen_ml").rglob("*.py")
        if p.name != "cli.py" and re.search(r"\bsys\.exit\(|\bexit\(\d", p.read_text())
    ]
    assert offenders == []


def test_entry_point_exit_codes():
    ok = subprocess.run([sys.executable, "-m", "servegen_ml.cli", "--help"], cwd=REPO, capture_output=True)
    bad = subprocess.run(
        [sys.executable, "-m", "servegen_ml.cli", "validate", "data.path=/nonexistent.csv"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0 and bad.returncode == 2
    assert bad.stderr.startswith("error: /nonexistent.csv") and "Traceback" not in bad.stderr
