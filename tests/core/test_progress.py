"""The step progress bar: drawn only on a terminal, silent in logs and with quiet=True."""

from __future__ import annotations

import io
import sys

from servegen_ml.core.progress import StepBar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _draw(monkeypatch, stream, quiet=False) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    with StepBar("generate", 3, quiet=quiet) as bar:
        bar.step("load checkpoint")
        bar.step("sample 3600 s")
        bar.step("write 72,000 requests")
    return stream.getvalue()


def test_bar_names_steps_on_a_terminal(monkeypatch):
    out = _draw(monkeypatch, _Terminal())
    assert "generate: 0/3 steps done, load checkpoint" in out
    assert "generate: 2/3 steps done, write 72,000 requests" in out


def test_bar_is_silent_off_a_terminal_and_when_quiet(monkeypatch):
    assert _draw(monkeypatch, io.StringIO()) == ""
    assert _draw(monkeypatch, _Terminal(), quiet=True) == ""
