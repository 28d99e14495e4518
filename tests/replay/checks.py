"""Compare what a load generator sent (the mock server's log) with the exported workload.

The reference is the workload's ``bailian`` export, whose rows hold each
request's whole prompt (``input_length``), output cap, arrival (s) and
previous turn (``parent_chat_id``); every other export of the same trace has
the same rows in the same order.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Reference:
    timestamp_s: np.ndarray
    input_tokens: np.ndarray
    output_tokens: np.ndarray
    parent: np.ndarray  # row of the previous turn, -1 for a first turn

    @classmethod
    def from_bailian(cls, path: Path) -> Reference:
        rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
        assert [r["chat_id"] for r in rows] == list(range(len(rows)))
        return cls(
            timestamp_s=np.array([r["timestamp"] for r in rows], dtype=float),
            input_tokens=np.array([r["input_length"] for r in rows], dtype=np.int64),
            output_tokens=np.array([r["output_length"] for r in rows], dtype=np.int64),
            parent=np.array([r["parent_chat_id"] for r in rows], dtype=np.int64),
        )


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def length_mismatches(ref: Reference, log: list[dict]) -> tuple[Counter, Counter]:
    """(pairs the file has and the log lacks, pairs the log has and the file lacks), pair = (prompt, cap)."""
    want = Counter(zip(ref.input_tokens.tolist(), ref.output_tokens.tolist()))
    got = Counter((r["prompt_tokens"], r["max_tokens"]) for r in log)
    return want - got, got - want


def send_lag_s(ref: Reference, log: list[dict]) -> np.ndarray:
    """Each request's send delay against the schedule, the most punctual request taken as on time (s)."""
    planned = np.sort(ref.timestamp_s)
    sent = np.sort(np.array([r["t"] for r in log], dtype=float))
    assert len(planned) == len(sent)
    offset = sent - planned
    return offset - offset.min()


def _tokens(record: dict) -> str:
    # The replay tokenizer makes one token of each non-whitespace character.
    return "".join("".join(text.split()) for text in record["text"])


def prefix_failures(ref: Reference, log: list[dict], shared_tokens) -> tuple[int, list[int]]:
    """(follow-ups checked, rows whose request does not begin with its predecessor's shared prefix).

    ``shared_tokens(row, parent)`` is how many leading tokens the follow-up
    must share with its predecessor's request under the format replayed. A
    request is found by its (prompt tokens, cap); where several rows have the
    same pair, any request with that pair may be the one.
    """
    by_key = defaultdict(list)
    for record in log:
        by_key[(record["prompt_tokens"], record["max_tokens"])].append(_tokens(record))
    failures, checked = [], 0
    for row in np.flatnonzero(ref.parent >= 0):
        parent = int(ref.parent[row])
        n = int(shared_tokens(row, parent))
        children = by_key[(int(ref.input_tokens[row]), int(ref.output_tokens[row]))]
        parents = by_key[(int(ref.input_tokens[parent]), int(ref.output_tokens[parent]))]
        checked += 1
        if n <= 0:
            continue
        if not any(len(c) >= n and len(p) >= n and c[:n] == p[:n] for c in children for p in parents):
            failures.append(int(row))
    return checked, failures


def complete_blocks(ref: Reference, block_tokens: int):
    """Shared prefix under a hash_ids rule: the predecessor's complete blocks (at most the child's prompt)."""

    def shared(row: int, parent: int) -> int:
        blocks = min(ref.input_tokens[parent] // block_tokens, -(-ref.input_tokens[row] // block_tokens))
        return min(blocks * block_tokens, ref.input_tokens[row])

    return shared
