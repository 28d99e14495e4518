"""The fast ingestion path: Arrow CSV reading with its pandas fallback, string hashing, read-ahead and
background writes. Each must give exactly what the plain path gives, errors included."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from servegen_ml.trace import readers
from servegen_ml.trace.io import TraceReader, TraceWriter, read_trace
from servegen_ml.trace.keymap import hash_strings
from servegen_ml.trace.readers import read_ahead, read_chunks
from servegen_ml.trace.validate import TraceValidationError

HEADER = "timestamp,client_id,request_id,input_tokens,output_tokens,image_tokens\n"


def _rows(n: int, start: int = 0) -> list[str]:
    return [
        f'{i * 0.5},c{i % 3},r{i},{10 + i},{1 + i % 7},"[{i % 5}, 576]"\n' for i in range(start, start + n)
    ]


def _csv(tmp_path, lines: list[str]):
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "".join(lines))
    return path


def _both_paths(path, chunk_rows: int, string_columns=("client_id", "request_id")):
    fast = list(read_chunks(path, "csv", chunk_rows, string_columns))
    plain = list(readers._pandas_csv_chunks(path, chunk_rows, string_columns))
    return fast, plain


def _same_chunks(fast, plain):
    assert [len(f) for f, _ in fast] == [len(p) for p, _ in plain]
    for (f, fr), (p, pr) in zip(fast, plain):
        np.testing.assert_array_equal(fr, pr)
        for col in p.columns:
            assert (
                f[col].astype(object).where(f[col].notna(), None).tolist()
                == p[col].astype(object).where(p[col].notna(), None).tolist()
            ), col


def test_arrow_csv_chunks_match_pandas_and_keep_exact_chunk_sizes(tmp_path):
    path = _csv(tmp_path, _rows(2_500))
    fast, plain = _both_paths(path, 1_000)
    assert [len(f) for f, _ in fast] == [1_000, 1_000, 500]
    _same_chunks(fast, plain)
    # Ids stay strings; "NA"-like text is not missing.
    assert fast[0][0]["request_id"].iloc[0] == "r0"


def test_type_change_after_the_first_block_falls_back_to_pandas_from_that_row(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CSV_BLOCK_BYTES", 4096)  # Arrow infers types from the first small block
    lines = _rows(3_000)
    lines[2_500] = lines[2_500].replace(",r2500,2510,", ",r2500,2510.5,")
    lines[2_700] = "\n"  # a blank line: pandas keeps it as an empty row (row numbers stay right)
    path = _csv(tmp_path, lines)
    fast, plain = _both_paths(path, 1_000)
    _same_chunks(fast, plain)
    with pytest.raises(TraceValidationError) as err:
        read_trace(path)
    assert f"{path}, row 2501, column 'input_tokens'" in str(err.value)


def test_quoted_newline_and_na_text_read_as_pandas_reads_them(tmp_path):
    lines = _rows(10)
    lines[3] = '1.5,"c\nx",NA,13,4,"[]"\n'
    path = _csv(tmp_path, lines)
    fast, plain = _both_paths(path, 4)
    _same_chunks(fast, plain)
    assert "NA" in pd.concat([f for f, _ in fast])["request_id"].tolist()


def test_date_strings_stay_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("when,x\n2023-11-16 18:15:46.680590,1\n2023-11-16 18:15:47.000001,2\n")
    ((frame, _),) = read_chunks(path, "csv", 10, ())
    assert frame["when"].tolist() == ["2023-11-16 18:15:46.680590", "2023-11-16 18:15:47.000001"]


def test_hash_strings_depends_only_on_the_text():
    words = ["", "a", "ab", "ba", "abcdefgh", "abcdefghi", "abcdefgh\x00", "é", "req-123456789012345"]
    small = hash_strings(pd.Series(words, dtype="string[pyarrow]"))
    assert len(set(small.tolist())) == len(words)
    # The same text in another container, at another offset, as large_string: the same hash.
    sliced = pa.array(["zz", *words], type=pa.large_string()).slice(1)
    np.testing.assert_array_equal(hash_strings(pd.Series(pd.arrays.ArrowExtensionArray(sliced))), small)
    np.testing.assert_array_equal(hash_strings(np.array(words, dtype=object)), small)
    assert hash_strings(pd.Series([None, ""], dtype="string[pyarrow]"))[0] == small[0]
    many = hash_strings(pd.Series([f"req-{i}" for i in range(200_000)], dtype="string[pyarrow]"))
    assert len(np.unique(many)) == 200_000


def test_duplicate_ids_across_chunks_are_found(tmp_path):
    lines = _rows(50)
    lines[42] = lines[42].replace(",r42,", ",r7,")
    path = _csv(tmp_path, lines)
    reader = TraceReader(path, chunk_rows=10, collect=True)
    with pytest.raises(TraceValidationError) as err:
        for _ in reader:
            pass
        reader.finish()
    assert f"{path}, row 43, column 'request_id': duplicate id" in str(err.value)


def test_read_ahead_keeps_order_and_reraises_in_place():
    def items():
        yield from range(5)
        raise ValueError("boom")

    got = []
    with pytest.raises(ValueError, match="boom"):
        for x in read_ahead(items()):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]
    stream = read_ahead(iter(range(1000)))
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()  # stopping early ends the producer


def test_background_write_error_surfaces_and_leaves_nothing(tmp_path):
    out = tmp_path / "o.parquet"
    good = read_trace(_csv(tmp_path, _rows(20)))
    bad = good.assign(input_tokens=good["input_tokens"].astype(object))
    bad.loc[3, "input_tokens"] = "x"
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        with TraceWriter(out) as writer:
            writer.write(good)
            writer.write(bad)
    assert not out.exists() and not list(tmp_path.glob(".o.parquet*"))


def _with_duplicates(tmp_path, n: int = 60):
    lines = _rows(n)
    for row, dup_of in ((43, 8), (51, 8), (52, 8), (56, 21)):  # 1-based data rows
        lines[row - 1] = lines[row - 1].replace(f",r{row - 1},", f",r{dup_of - 1},")
    return _csv(tmp_path, lines)


@pytest.mark.parametrize("chunk_rows", [1, 3, 7, 50, 1000])
def test_duplicate_ids_found_at_every_chunk_size(tmp_path, chunk_rows):
    path = _with_duplicates(tmp_path)
    reader = TraceReader(path, chunk_rows=chunk_rows, collect=True)
    with pytest.raises(TraceValidationError) as err:
        for _ in reader:
            pass
        reader.finish()
    [problem] = err.value.problems
    assert (problem.kind, problem.rows, problem.count) == ("duplicate_id", [43, 51, 52, 56], 4)
    assert f"{path}, row 52, column 'request_id': duplicate id" in str(err.value)


@pytest.mark.parametrize("chunk_rows", [1, 7, 1000])
def test_skip_bad_rows_drops_later_duplicates_across_chunks(tmp_path, chunk_rows):
    path = _with_duplicates(tmp_path)
    with pytest.warns(UserWarning, match=r"dropped 4 bad rows of 60 \(rows by problem: duplicate_id: 4\)"):
        trace = read_trace(path, skip_bad_rows=True, chunk_rows=chunk_rows)
    kept = [f"r{i}" for i in range(60) if i + 1 not in (43, 51, 52, 56)]
    assert trace["request_id"].tolist() == kept


def test_duplicate_check_holds_no_set_of_all_ids(tmp_path):
    n, chunk = 20_000, 1_000
    path = _csv(tmp_path, _rows(n))
    reader = TraceReader(path, chunk_rows=chunk)
    for _ in reader:
        pass
    spill = reader.validator._id_spill
    assert (
        spill.pairs == n and spill.largest_chunk == chunk
    )  # every id spilled, one chunk in memory at a time
    big = [k for k, v in vars(reader.validator).items() if isinstance(v, np.ndarray) and len(v) > chunk]
    assert big == []
    reader.finish()
    assert 0 < spill.largest_partition <= 2 * n // 256  # reading back: one hash partition at a time


def test_parquet_chunks_do_not_accumulate_arrow_memory(tmp_path):
    import pyarrow.parquet as pq

    n, chunk = 2_000_000, 200_000  # row groups of a few MB: what pre-buffering kept, one after another
    rng = np.random.default_rng(0)
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"timestamp": rng.random(n), "x": rng.random(n)}), path, row_group_size=chunk)
    allocated = []
    for frame, _ in read_chunks(path, "parquet", chunk):
        del frame
        allocated.append(pa.total_allocated_bytes())
    assert len(allocated) == n // chunk
    assert allocated[-1] - allocated[2] < 1 << 20  # pre-buffered: +5.5 MB over these 7 chunks
