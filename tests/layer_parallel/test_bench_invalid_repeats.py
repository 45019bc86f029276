"""lp17 #2: `scripts/bench_layer_parallel.py` clamped a non-positive decode time (the full generation no slower than
the 1-token one, timer noise) to 1e-9 s, reported ~1e9 tokens/s as the best run and a ~1e7 speed-up in the ratio line.
Such a repeat is now invalid: NaN in the runs, left out of best / median and the paired range, counted in
`invalid_runs`; when every repeat of a model is invalid the run fails naming `--new_tokens`. The timer is replaced by
a fixed schedule, so these tests do not depend on the machine's load."""

import math

import pytest

ARGS = ["--tiny", "--new_tokens", "4", "--batch_sizes", "1", "--prompt_length", "4"]


def _kind(model):
    pairs = getattr(model.config, "lp_pairs", None)
    return "source" if pairs is None else ("layer_parallel" if pairs else "control")


def _fake_timer(bench, monkeypatch, full_times):
    """`_generate_time` returning 1.0 s for a 1-token generation and, per model kind, the next entry of
    `full_times[kind]` for a full one (the first two are the warm-up's); 2.0 s once a schedule runs out."""
    calls = {kind: 0 for kind in full_times}

    def fake(model, prompt, new_tokens, mode, device):
        if new_tokens == 1:
            return 1.0
        kind = _kind(model)
        schedule, calls[kind] = full_times.get(kind, []), calls.get(kind, 0) + 1
        return schedule[calls[kind] - 1] if calls[kind] <= len(schedule) else 2.0

    monkeypatch.setattr(bench, "_generate_time", fake)


def test_a_repeat_with_no_decode_time_is_invalid_not_a_huge_speed_up(bench, monkeypatch):
    # layer_parallel: warm-up 2, then repeats: 1.0 (== prefill: invalid), 1.5 (6 tok/s), 1.25 (12 tok/s)
    # source: 2.0 every time (3 tok/s); control: 0.9 (< prefill: invalid) in the first repeat
    _fake_timer(bench, monkeypatch, {"layer_parallel": [2.0, 2.0, 1.0, 1.5, 1.25], "control": [2.0, 2.0, 0.9]})
    lines = bench.main([*ARGS, "--repeats", "3"])
    by_model = {line["model"]: line for line in lines if "model" in line}
    (ratio,) = [line for line in lines if "decode_ratio" in line]
    lp, source, control = by_model["layer_parallel"], by_model["source"], by_model[bench.CONTROL]
    # was: best=3e9 tokens/s, decode_ratio ~1e9, range up to ~1e9
    assert (lp["decode_tokens_per_s"], lp["decode_tokens_per_s_median"], lp["invalid_runs"]) == (12.0, 9.0, 1)
    assert (source["decode_tokens_per_s"], source["invalid_runs"]) == (3.0, 0)
    assert (control["decode_tokens_per_s"], control["invalid_runs"]) == (3.0, 1)
    assert (ratio["decode_ratio"], ratio["decode_ratio_median"], ratio["decode_ratio_range"]) == (4.0, 3.0, [2.0, 4.0])
    assert ratio["control_decode_ratio_range"] == [1.0, 1.0]
    assert ratio["invalid_runs"] == {"source": 0, "layer_parallel": 1, bench.CONTROL: 1}


def test_every_repeat_invalid_fails_naming_new_tokens(bench, monkeypatch):
    _fake_timer(bench, monkeypatch, {"layer_parallel": [2.0, 2.0, 1.0, 0.8]})
    # was: a decode rate of 3e9 tokens/s and a ratio of 1e9
    with pytest.raises(RuntimeError, match=r"Every one of the 2 timed runs of layer_parallel.*larger --new_tokens"):
        bench.main([*ARGS, "--repeats", "2"])


def test_decode_rates_keeps_the_invalid_runs_as_nan(bench, monkeypatch):
    _fake_timer(bench, monkeypatch, {"source": [2.0, 2.0, 2.0, 0.5]})
    from types import SimpleNamespace

    args = SimpleNamespace(new_tokens=4, repeats=2, device="cpu")
    model = SimpleNamespace(config=SimpleNamespace())
    prompt = SimpleNamespace(shape=(2, 4))
    rates = bench.decode_rates({"source": model}, prompt, args, "eager")["source"]
    assert rates["best"] == rates["median"] == 6.0 and rates["invalid"] == 1
    assert rates["runs"][0] == 6.0 and math.isnan(rates["runs"][1])
    assert bench._paired_range([math.nan, 2.0], [1.0, 1.0]) == [2.0, 2.0]
    assert bench._paired_range([math.nan], [1.0]) is None
