"""Property-based tests (hypothesis): garbage in never gives a traceback or a success.

Readers get random bytes and random JSON records, the spec parser random override values, checkpoint
loading random JSON and random bytes in place of its files. Each property allows exactly one outcome
besides success on valid input: the project's own input error (exit 2 from the CLI).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from servegen_ml.cli import main
from servegen_ml.core.errors import CheckpointError, UserError
from servegen_ml.core.spec import GenerationSpec
from servegen_ml.generators.base import load_generator
from servegen_ml.trace.io import read_trace
from tests.reliability.damage import NEURAL, PARAMETRIC

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
REQUIRED = ("timestamp", "client_id", "input_tokens", "output_tokens")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


def _scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="servegen-prop-"))


@FAST
@given(data=st.binary(max_size=600), suffix=st.sampled_from([".csv", ".jsonl", ".parquet", ".trace"]))
def test_random_bytes_are_an_input_error(data, suffix):
    directory = _scratch()
    try:
        path = directory / f"t{suffix}"
        path.write_bytes(data)
        with pytest.raises(UserError):
            read_trace(path)
    finally:
        shutil.rmtree(directory)


@FAST
@given(
    records=st.lists(
        st.dictionaries(st.sampled_from([*REQUIRED, "turn", "image_tokens", "x"]), json_values, max_size=6),
        min_size=1,
        max_size=6,
    )
)
# The extra column "x" is reported by a warning, which is part of the accepted behaviour here.
@pytest.mark.filterwarnings("ignore:.*ignoring columns outside the trace schema:UserWarning")
def test_random_json_records_read_or_fail_cleanly(records):
    directory = _scratch()
    try:
        path = directory / "t.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        try:
            trace = read_trace(path, format="native")
        except UserError:
            return
        # Accepted: then it is a canonical trace whose values obey the schema.
        assert len(trace) == len(records)
        assert trace["input_tokens"].min() >= 0 and trace["output_tokens"].min() >= 0
        assert trace["timestamp"].map(math.isfinite).all()
    finally:
        shutil.rmtree(directory)


def _number(text: str) -> float:
    try:
        return abs(float(text))
    except ValueError:
        return 0.0


override_values = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@FAST
@given(duration=override_values, rate=override_values, clients=override_values, seed=override_values)
def test_spec_parser_accepts_or_names_the_key(duration, rate, clients, seed):
    try:
        spec = GenerationSpec.from_values(duration_s=duration, rate=rate, clients=clients, seed=seed)
    except UserError as e:
        assert any(k in str(e) for k in ("duration_s", "rate", "clients", "seed", "start_s")), str(e)
        return
    assert spec.duration_s > 0 and math.isfinite(spec.duration_s) and spec.seed >= 0


@settings(max_examples=15, deadline=None)
@given(value=override_values, key=st.sampled_from(["duration_s", "seed", "rate", "clients", "start_s"]))
def test_cli_overrides_never_trace_back(value, key):
    # A valid but huge duration or rate is a long run, not an error (generate streams in bounded
    # memory); the parser's handling of such values is checked above without sampling.
    assume(not (key in ("duration_s", "rate") and 1000 < _number(value) < math.inf))
    directory = _scratch()
    try:
        args = {"duration_s": "30", "rate": "5", key: value}
        argv = ["generate", f"checkpoint={PARAMETRIC}", f"out={directory / 'w.parquet'}", "quiet=true"]
        argv += [f"{k}={v}" for k, v in args.items() if "'" not in v and '"' not in v]
        assert main(argv) in (0, 2)
    finally:
        shutil.rmtree(directory)


CHECKPOINT_FILES = [
    (PARAMETRIC, name) for name in ("manifest.json", "pool.json", "rates.parquet", "conversations.json")
]
CHECKPOINT_FILES += [
    (NEURAL, name)
    for name in ("neural.json", "model.safetensors", "clients.safetensors", "conversation.json")
]


@settings(max_examples=60, deadline=None)
@given(
    target=st.sampled_from(CHECKPOINT_FILES),
    content=st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300)),
)
def test_checkpoint_with_a_random_file_is_refused(target, content):
    source, name = target
    directory = _scratch()
    try:
        checkpoint = directory / "ck"
        shutil.copytree(source, checkpoint)
        (checkpoint / name).write_bytes(content)
        with pytest.raises(CheckpointError):
            load_generator(checkpoint)
    finally:
        shutil.rmtree(directory)


@settings(max_examples=30, deadline=None)
@given(
    key=st.sampled_from(["span_s", "rate_window_s", "data_window_s", "clients", "origin_s"]),
    value=json_values,
)
def test_pool_description_with_a_random_field_loads_only_if_sound(key, value):
    directory = _scratch()
    try:
        checkpoint = directory / "ck"
        shutil.copytree(PARAMETRIC, checkpoint)
        meta = json.loads((checkpoint / "pool.json").read_text())
        meta[key] = value
        (checkpoint / "pool.json").write_text(json.dumps(meta))
        try:
            gen = load_generator(checkpoint)
        except CheckpointError as e:
            assert "pool.json" in str(e) or "parquet" in str(e)
            return
        spec = GenerationSpec.from_values(duration_s=60)
        import numpy as np

        gen.sample(spec, np.random.default_rng(0))  # sound values sample without error
    finally:
        shutil.rmtree(directory)
