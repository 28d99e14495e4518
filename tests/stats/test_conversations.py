import numpy as np
import pandas as pd
import pytest

from servegen_ml.stats.conversations import ConversationAccumulator, conversation_stats


def _trace(seed=0, n=3000):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0, 20_000, n))
    ids = pd.Series(pd.array([f"c{i}" for i in rng.integers(0, n // 4, n)], dtype="string[pyarrow]"))
    ids[rng.random(n) < 0.1] = pd.NA
    return pd.DataFrame({"timestamp": t, "conversation_id": ids})


def test_planted_conversations():
    trace = pd.DataFrame(
        {
            "timestamp": [0.0, 1.0, 5.0, 7.0, 9.0, 30.0],
            "conversation_id": pd.array(["a", "b", "a", None, "a", "b"], dtype="string[pyarrow]"),
        }
    )
    s = conversation_stats(trace)
    assert sorted(s["turns"]) == [1, 2, 3]
    np.testing.assert_allclose(sorted(s["inter_turn_gap_s"]), [4.0, 5.0, 29.0])
    assert s["follow_up_share"] == pytest.approx(3 / 6)


def test_streaming_matches_in_memory():
    trace = _trace()
    acc = ConversationAccumulator(idle_s=1e9)
    for part in np.array_split(np.arange(len(trace)), 7):
        c = trace.iloc[part]
        acc.add(c["timestamp"].to_numpy(), c["conversation_id"])
    got, want = acc.result(), conversation_stats(trace)
    assert got["conversations"] == len(want["turns"])
    assert got["follow_up_share"] == pytest.approx(want["follow_up_share"])
    assert got["turns_per_conversation"]["mean"] == pytest.approx(want["turns"].mean())
    assert got["turns_per_conversation"]["max"] == want["turns"].max()
    assert got["inter_turn_gap_s"]["mean"] == pytest.approx(want["inter_turn_gap_s"].mean())


def test_idle_conversations_close_and_resume_as_new():
    acc = ConversationAccumulator(idle_s=100.0)
    acc.add(np.array([0.0, 10.0]), pd.Series(["a", "a"]))
    acc.add(np.array([500.0, 510.0]), pd.Series(["b", "a"]))
    r = acc.result()
    assert r["conversations"] == 3  # a (2 turns), b, a resumed after 500 s idle
    assert r["follow_up_share"] == pytest.approx(1 / 4)


def test_long_silence_inside_a_chunk_also_splits():
    acc = ConversationAccumulator(idle_s=100.0)
    acc.add(np.array([0.0, 10.0, 500.0, 520.0]), pd.Series(["a", "a", "a", "a"]))
    r = acc.result()
    assert r["conversations"] == 2 and r["turns_per_conversation"]["max"] == 2
    assert r["follow_up_share"] == pytest.approx(2 / 4)


def test_memory_is_bounded_by_the_chunk_not_the_open_conversations():
    trace = _trace(3, n=20_000)  # ~5,000 conversations, most open across every chunk
    acc = ConversationAccumulator(idle_s=1e9)
    for part in np.array_split(np.arange(len(trace)), 20):
        c = trace.iloc[part]
        acc.add(c["timestamp"].to_numpy(), c["conversation_id"])
    held = [k for k, v in vars(acc).items() if isinstance(v, np.ndarray) and len(v) > 1_000]
    assert held == [] and acc._spill.largest_chunk <= 1_000
    assert acc.result()["conversations"] == len(conversation_stats(trace)["turns"])
