"""Sampling must not change by accident: the shipped parametric checkpoints give these bytes (mooncake
JSONL, 300 s, seed 3). Updated deliberately when generation became streamed in seeded time units
(issue 15): every unit draws from its own seed, so the bytes changed once."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from servegen_ml.cli import main

REPO = Path(__file__).resolve().parents[2]
GOLDEN = {
    "conversational": "1317e57a0cdd5b61b67474e23c6658ce96a3373f88ddd6654966a5aeaa465c88",
    "language": "77c2d7c8ecdfa67f15805bc938c1e919765c77078ab345152ed9dace6a0d6b76",
    "multimodal": "2c5586e4a4ede07202cb79f60d2068232013f5732b159f30a4c5bf449556347e",
    "reasoning": "9cc401b57bc81881e30e041e6b9e709d517852491eecf10a05821b567eecd6e4",
}


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_shipped_parametric_workload_bytes_are_unchanged(family, tmp_path):
    out = tmp_path / "w.jsonl"
    checkpoint = REPO / "checkpoints" / family / "parametric"
    args = ["generate", f"checkpoint={checkpoint}", "duration_s=300", "format=mooncake", f"out={out}"]
    assert main([*args, "seed=3", "quiet=true"]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == GOLDEN[family]
