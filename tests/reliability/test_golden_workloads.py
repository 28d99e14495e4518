"""Checkpoint validation must not change sampling: the shipped parametric checkpoints still give the
same bytes (mooncake JSONL, 300 s, seed 3) as before the checks were added."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from servegen_ml.cli import main

REPO = Path(__file__).resolve().parents[2]
GOLDEN = {
    "conversational": "1ca482651332a94d21b59c981f2da7cfec6286e957a34c79177180f9ffff7329",
    "language": "a7558c818f228d894497ed769c6a5f43c91a98d776a738b4bcabff400e385b79",
    "multimodal": "4a9bbff915cb9c37bcf62a1d42eeeb88d359e15f70cef2440502f48a194c0714",
    "reasoning": "dc1ac4ebbc8315e7f969754c9f49a0c85b4be34218498d2323c1374b51634cef",
}


@pytest.mark.parametrize("family", sorted(GOLDEN))
def test_shipped_parametric_workload_bytes_are_unchanged(family, tmp_path):
    out = tmp_path / "w.jsonl"
    checkpoint = REPO / "checkpoints" / family / "parametric"
    args = ["generate", f"checkpoint={checkpoint}", "duration_s=300", "format=mooncake", f"out={out}"]
    assert main([*args, "seed=3", "quiet=true"]) == 0
    assert hashlib.sha256(out.read_bytes()).hexdigest() == GOLDEN[family]
