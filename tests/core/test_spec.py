import numpy as np
import pytest

from servegen_ml.core.spec import DAY_S, WEEK_S, ClientSpec, GenerationSpec, RateSpec, wrap_time


def test_rate_parse_forms(tmp_path):
    assert RateSpec.parse("natural").kind == "natural"
    assert RateSpec.parse("scale:2").value == 2.0
    assert RateSpec.parse("50").kind == "constant"
    c = RateSpec.parse("curve:0=10,600=50")
    assert np.allclose(c.target_rate(np.array([0, 300, 900]), np.ones(3)), [10, 30, 50])
    f = tmp_path / "r.csv"
    f.write_text("t_s,rate\n0,5\n100,15\n")
    assert np.allclose(RateSpec.parse(str(f)).target_rate(np.array([50.0]), np.ones(1)), [10])
    for bad in ("scale:-1", "fast", "curve:a=b", "0"):
        with pytest.raises(ValueError):
            RateSpec.parse(bad)


def test_multiplier_keeps_shape_for_scale():
    nat = np.array([1.0, 2.0, 0.0])
    assert np.allclose(RateSpec.parse("scale:3").multiplier(np.zeros(3), nat), [3, 3, 0])
    assert np.allclose(RateSpec.parse("10").multiplier(np.zeros(3), nat), [10, 5, 0])


def test_clients_parse():
    assert ClientSpec.parse("all").kind == "all"
    assert ClientSpec.parse("new:20").n == 20
    assert ClientSpec.parse("a,b").ids == ("a", "b")
    assert ClientSpec.parse(["1", 2]).ids == ("1", "2")
    with pytest.raises(ValueError):
        ClientSpec.parse("new:0")


def test_wrap_time_preserves_phase():
    span = 14 * DAY_S
    t = np.array([0.0, span - 1, span, span + 3600, 3 * WEEK_S + 5])
    w = wrap_time(t, span)
    assert np.all((w >= 0) & (w < span))
    assert np.allclose(np.mod(w, WEEK_S), np.mod(t, WEEK_S))
    assert np.allclose(wrap_time(np.array([DAY_S + 10]), DAY_S), [10])
    assert w[0] == 0 and w[1] == span - 1


def test_spec_validation():
    with pytest.raises(ValueError):
        GenerationSpec(duration_s=0)
    with pytest.raises(ValueError):
        GenerationSpec.from_values(10, upsample="stretch")
    s = GenerationSpec.from_values("60", rate="scale:2", clients="new:3", seed="4")
    assert s.to_dict()["rate"] == "scale:2" and s.seed == 4
