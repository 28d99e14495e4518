"""Streamed generation (issue 15): the bytes written depend on the spec and seed only, never on the block
size or the number of workers; conversations crossing block borders stay whole; a streamed file is the
file a one-shot export of the same rows gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from servegen_ml.core.errors import UserError
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.export import WorkloadWriter, export_trace
from servegen_ml.generators.base import load_generator
from servegen_ml.generators.naive import NaiveGenerator
from servegen_ml.trace.io import read_trace
from servegen_ml.trace.validate import validate_trace
from tests.factories import conversational_trace, synthetic_trace

REPO = Path(__file__).resolve().parents[2]
FORMATS = {"native": "w.parquet", "native_jsonl": "w.jsonl", "mooncake": "w.jsonl", "bailian": "w.jsonl"}
FORMATS_CONVERSATIONAL = {**FORMATS, "aiperf_bailian": "w.jsonl", "vidur": "w.csv", "azure": "w.csv"}
_GENERATORS: dict = {}


def generator(name: str):
    """Shipped checkpoints (parametric, neural) and small fitted naive generators, loaded once."""
    if name not in _GENERATORS:
        if name == "naive":
            gen = NaiveGenerator().fit(synthetic_trace(seed=0, duration_s=1800.0, n_clients=3))
        elif name == "naive/conversational":
            gen = NaiveGenerator().fit(conversational_trace(seed=0, duration_s=7200.0))
        else:
            gen = load_generator(REPO / "checkpoints" / name)
        _GENERATORS[name] = gen
    return _GENERATORS[name]


# (generator, spec, unit_s): units short enough that a test crosses several borders in seconds.
CASES = {
    "parametric": ("language/parametric", dict(duration_s=240.0, seed=3), 60.0),
    "parametric/conversational": ("conversational/parametric", dict(duration_s=1800.0, seed=3), 300.0),
    "parametric/curve": (
        "multimodal/parametric",
        dict(duration_s=240.0, rate="curve:0=50,200=200", seed=1),
        60.0,
    ),
    "parametric/conversational/compress": (
        "conversational/parametric",
        dict(duration_s=900.0, rate="scale:2", upsample="compress", seed=5),
        300.0,
    ),
    "naive": ("naive", dict(duration_s=600.0, seed=2), 120.0),
    "naive/conversational": ("naive/conversational", dict(duration_s=1800.0, seed=2), 300.0),
    "neural": ("language/neural", dict(duration_s=120.0, seed=4), 40.0),
    "neural/conversational": ("conversational/neural", dict(duration_s=900.0, seed=4), 300.0),
}


def write_all(case: str, paths: dict[str, Path], block_units: int, workers: int) -> dict[str, bytes]:
    """Stream one generation into every format of ``paths`` (format -> file); the bytes of each."""
    name, values, unit_s = CASES[case]
    gen = generator(name)
    spec = GenerationSpec.from_values(**values)
    writers = [
        WorkloadWriter(path, "native" if fmt == "native_jsonl" else fmt, {"case": case})
        for fmt, path in paths.items()
    ]
    for w in writers:
        w.__enter__()
    for block in gen.generate_blocks(spec, block_units * unit_s, workers, unit_s=unit_s):
        for w in writers:
            w.write(block.frame, block.continues)
    for w in writers:
        w.__exit__(None, None, None)
    return {fmt: path.read_bytes() for fmt, path in paths.items()}


def write(case: str, fmt: str, path: Path, block_units: int, workers: int) -> bytes:
    return write_all(case, {fmt: path}, block_units, workers)[fmt]


def blocks(case: str, block_units: int = 1, workers: int = 1) -> list[pd.DataFrame]:
    name, values, unit_s = CASES[case]
    spec = GenerationSpec.from_values(**values)
    return [
        b.frame for b in generator(name).generate_blocks(spec, block_units * unit_s, workers, unit_s=unit_s)
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bytes_do_not_depend_on_block_size_or_workers(case, tmp_path):
    formats = FORMATS_CONVERSATIONAL if "conversational" in case else FORMATS
    runs = {}
    for run, block_units, workers in (("a", 1, 1), ("b", 3, 2), ("c", 2, 1)):
        paths = {fmt: tmp_path / f"{run}-{fmt}-{name}" for fmt, name in formats.items()}
        runs[run] = write_all(case, paths, block_units, workers)
    for fmt, name in formats.items():
        one = runs["a"][fmt]
        assert len(one) > 1000, (case, fmt)
        assert runs["b"][fmt] == one and runs["c"][fmt] == one, (case, fmt)
        # The sidecar is the same too (it names neither).
        meta = Path(str(tmp_path / f"a-{fmt}-{name}") + ".meta.json").read_text()
        assert Path(str(tmp_path / f"b-{fmt}-{name}") + ".meta.json").read_text().replace("b-", "a-") == meta


@pytest.mark.parametrize(
    "case", ["parametric/conversational", "naive/conversational", "neural/conversational"]
)
def test_conversations_cross_block_borders_and_stream_as_one_shot(case, tmp_path):
    parts = blocks(case)
    assert len(parts) >= 3
    whole = pd.concat(parts, ignore_index=True)
    validate_trace(whole)
    block_of = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    conversation = whole["conversation_id"].to_numpy()
    spans = pd.Series(block_of).groupby(conversation).agg(["min", "max"])
    crossing = spans[spans["max"] > spans["min"]]
    assert len(crossing) >= 10, "no conversation crosses a block border: the test proves nothing"
    # Ids number conversations in order of their first row; turns of a conversation go up by one.
    first = pd.unique(conversation)
    np.testing.assert_array_equal(first.astype(int), np.arange(len(first)))
    turns = whole.groupby("conversation_id", sort=False)["turn"].agg(lambda t: np.all(np.diff(t) == 1))
    assert turns.all()
    ts = whole["timestamp"].to_numpy()
    assert (np.diff(ts) >= 0).all() and ts[-1] < CASES[case][1]["duration_s"]
    # A streamed file holds the bytes a one-shot export of the same rows gives (hash ids, chat ids).
    fmts = ("mooncake", "bailian", "aiperf_bailian")
    streamed = write_all(case, {f: tmp_path / f"s-{f}.jsonl" for f in fmts}, block_units=1, workers=1)
    for fmt in fmts:
        assert export_trace(whole, tmp_path / f"o-{fmt}.jsonl", fmt).read_bytes() == streamed[fmt], fmt


def test_sample_and_stream_are_the_same_process():
    """``sample`` is one unit of the stream: same columns, dtypes and rate (the seeding differs)."""
    gen = generator("conversational/parametric")
    spec = GenerationSpec.from_values(duration_s=3600.0, seed=5)
    sampled = [len(gen.sample(spec, np.random.default_rng(s))) for s in range(4)]
    streamed = [
        sum(len(b.frame) for b in gen.generate_blocks(GenerationSpec.from_values(duration_s=3600.0, seed=s)))
        for s in range(4)
    ]
    assert abs(np.mean(streamed) / np.mean(sampled) - 1) < 0.1
    one = gen.sample(spec, np.random.default_rng(0))
    stream = pd.concat([b.frame for b in gen.generate_blocks(spec)], ignore_index=True)
    assert list(one.columns) == list(stream.columns) and (one.dtypes == stream.dtypes).all()


def test_new_clients_are_drawn_once_per_spec():
    gen = generator("language/parametric")
    spec = GenerationSpec.from_values(duration_s=1200.0, clients="new:5", seed=1)
    a = pd.concat([b.frame for b in gen.generate_blocks(spec, unit_s=60.0)], ignore_index=True)
    b = pd.concat([b.frame for b in gen.generate_blocks(spec, unit_s=60.0, workers=2)], ignore_index=True)
    pd.testing.assert_frame_equal(a, b)
    # Each new client copies one fitted client for the whole span: its lengths come from one client's tables.
    assert set(a["client_id"].unique()) <= {f"new-{i}" for i in range(5)}


def test_block_s_must_be_a_whole_number_of_units():
    gen = generator("language/parametric")
    with pytest.raises(UserError, match="block_s=90"):
        next(gen.generate_blocks(GenerationSpec(duration_s=600.0), block_s=90.0, unit_s=60.0))


def test_parquet_row_groups_do_not_depend_on_blocks(tmp_path, monkeypatch):
    from servegen_ml.export import formats

    monkeypatch.setattr(formats, "ROW_GROUP_ROWS", 1000)
    one = write("parametric", "native", tmp_path / "a.parquet", block_units=1, workers=1)
    assert write("parametric", "native", tmp_path / "b.parquet", block_units=4, workers=1) == one
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(tmp_path / "a.parquet").metadata
    assert meta.num_row_groups > 3
    assert {meta.row_group(i).num_rows for i in range(meta.num_row_groups - 1)} == {1000}
    assert len(read_trace(tmp_path / "a.parquet")) == meta.num_rows


def test_workers_load_the_checkpoint_instead_of_a_pickled_copy(tmp_path):
    import shutil

    from servegen_ml.generators.stream import CheckpointRef

    ckpt = tmp_path / "ckpt"
    shutil.copytree(REPO / "checkpoints" / "conversational" / "parametric", ckpt)
    gen = load_generator(ckpt)
    spec = GenerationSpec.from_values(duration_s=900.0, seed=5)
    one = pd.concat([b.frame for b in gen.generate_blocks(spec, unit_s=300.0)], ignore_index=True)
    two = [b.frame for b in gen.generate_blocks(spec, unit_s=300.0, workers=2, checkpoint=ckpt)]
    pd.testing.assert_frame_equal(one, pd.concat(two, ignore_index=True))
    # What a worker gets is the path and digest; a checkpoint changed since the load is refused.
    ref = CheckpointRef(ckpt, "0" * 64)
    with pytest.raises(UserError, match="changed on disk"):
        ref.load()
