"""Layer-pairing configuration (`LayerParallelConfig`, `resolve_pairs`) and the quality-sweep helpers: behaviours
pinned against hand counts, closed forms or float64 references computed in the test."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.models.layer_parallel import LayerParallelConfig
from hf_ext.models.layer_parallel.configuration_layer_parallel import resolve_pairs
from hf_ext.models.layer_parallel.sweep import (
    choose_range,
    evaluate_causal_lm,
    format_sweep_table,
    pairing_ranges,
    perplexity_sweep,
    save_sweep,
)


def _llama_cfg(**kw):
    base = dict(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
    )
    base.update(kw)
    return LlamaConfig(**base)


# --- resolve_pairs -------------------------------------------------------------------------------------------------
def test_resolve_pairs_refuses_a_range_and_explicit_pairs_together():
    """`pairs` excludes `start`/`end`: giving both is refused instead of silently using one of them."""
    with pytest.raises(ValueError, match="either"):
        resolve_pairs(6, start=0, end=2, pairs=[[0, 1]])
    with pytest.raises(ValueError, match="either"):
        resolve_pairs(6, end=4, pairs=[[2, 3]])


@pytest.mark.parametrize("start, end", [(True, 3), (0, True), (False, 2)])
def test_resolve_pairs_refuses_booleans_as_layer_indices(start, end):
    with pytest.raises(TypeError, match="integers"):
        resolve_pairs(6, start, end)


@pytest.mark.parametrize("pair", [[0, 1, 2], [1], [True, 2], [False, True]])
def test_resolve_pairs_refuses_entries_that_are_not_two_integer_indices(pair):
    with pytest.raises(ValueError, match="two layer indices"):
        resolve_pairs(6, pairs=[pair])


def test_resolve_pairs_sorts_unordered_pairs_and_refuses_touching_ones():
    """Pairs given in any order are sorted (not mistaken for an overlap); pairs sharing a layer overlap."""
    assert resolve_pairs(8, pairs=[[6, 7], [0, 1], [3, 4]]) == [[0, 1], [3, 4], [6, 7]]
    with pytest.raises(ValueError, match="overlap"):
        resolve_pairs(8, pairs=[[2, 3], [3, 4]])
    with pytest.raises(ValueError, match="overlap"):
        resolve_pairs(8, pairs=[[3, 4], [2, 3]])


def test_qwen2_source_without_head_dim_mirrors_hidden_over_heads():
    """A Qwen2 config has no `head_dim`; the layer-parallel config mirrors hidden_size // num_attention_heads."""
    from transformers import Qwen2Config

    src = Qwen2Config(vocab_size=32, hidden_size=24, intermediate_size=16, num_hidden_layers=4, num_attention_heads=3,
                      num_key_value_heads=1)  # fmt: skip
    assert getattr(src, "head_dim", None) is None
    config = LayerParallelConfig(source_config=src, lp_start=0, lp_end=2)
    assert config.head_dim == 8
    assert config.num_key_value_heads == 1


# --- pairing_ranges ----------------------------------------------------------------------------------------------
def test_pairing_ranges_keeps_only_ranges_whose_pairs_share_an_attention_type():
    """Only the two layers *of each pair* must share a type; neighbours of different pairs may differ."""
    f, s = "full_attention", "sliding_attention"
    types = [f, f, s, s, f, f]
    # by hand: 1 pair: starts 0 (f,f), 2 (s,s), 4 (f,f); 2 pairs: 0 ((f,f),(s,s)), 2 ((s,s),(f,f)); 3 pairs: 0
    expected = [(0, 2), (2, 4), (4, 6), (0, 4), (2, 6), (0, 6)]
    assert pairing_ranges(6, layer_types=types) == expected
    with pytest.raises(ValueError, match="full-attention with a sliding-window"):
        pairing_ranges(4, [1], stride=1, layer_types=[f, s, f, s])


def test_pairing_ranges_checks_its_arguments():
    with pytest.raises(ValueError, match="at least 2 layers"):
        pairing_ranges(1)
    with pytest.raises(ValueError, match="impossible"):
        pairing_ranges(6, [0])
    with pytest.raises(ValueError, match="one per layer"):
        pairing_ranges(4, layer_types=["full_attention"] * 3)


def test_pairing_ranges_sorts_and_deduplicates_pair_counts():
    assert pairing_ranges(4, [2, 1, 2]) == [(0, 2), (1, 3), (2, 4), (0, 4)]


# --- evaluate_causal_lm ------------------------------------------------------------------------------------------
class _TableLM(torch.nn.Module):
    """Next-token logits read from a fixed table row per current token; dropout on them in training mode."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.as_tensor(table, dtype=torch.float32), requires_grad=False)
        self.drop = torch.nn.Dropout(0.9)

    def forward(self, input_ids, use_cache=None):
        class Out:
            pass

        out = Out()
        out.logits = self.drop(self.table[input_ids])
        return out


def _reference_metrics(table, rows):
    total, correct, count = 0.0, 0, 0
    for ids, labels in rows:
        for t in range(len(ids) - 1):
            target = labels[t + 1]
            if target == -100:
                continue
            logits = [float(x) for x in table[ids[t]]]
            lse = max(logits) + math.log(sum(math.exp(v - max(logits)) for v in logits))
            total += lse - logits[target]
            correct += int(max(range(len(logits)), key=logits.__getitem__) == target)
            count += 1
    return total / count, correct / count


def test_evaluate_causal_lm_is_token_weighted_over_shifted_labels():
    """Loss = sum of next-token cross-entropies / number of labelled tokens over all batches (float64 reference),
    labels shifted by one, -100 ignored; evaluation runs in eval mode."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    table = torch.randn(5, 5, generator=g).double() * 2
    ids = torch.randint(0, 5, (5, 7), generator=g).tolist()
    labels = [list(r) for r in ids]
    labels[0][1:4] = [-100] * 3  # uneven numbers of labelled tokens per batch
    labels[3][2] = -100
    ds = Dataset.from_dict({"input_ids": ids, "labels": labels})
    model = _TableLM(table).train()
    got = evaluate_causal_lm(model, ds, batch_size=2)
    loss, acc = _reference_metrics(table.tolist(), list(zip(ids, labels)))
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert got["accuracy"] == pytest.approx(acc)


def test_evaluate_causal_lm_refuses_an_empty_dataset():
    from datasets import Dataset

    with pytest.raises(ValueError, match="empty"):
        evaluate_causal_lm(_TableLM(torch.zeros(3, 3)), Dataset.from_dict({"input_ids": [], "labels": []}))


# --- perplexity_sweep --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_source_and_data():
    from datasets import Dataset

    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_cfg(initializer_range=0.3)).eval()
    ids = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(1)).tolist()
    return model, Dataset.from_dict({"input_ids": ids, "labels": ids})


def test_perplexity_sweep_rows_hold_ratios_and_extra_eval_of_each_converted_model(tiny_source_and_data):
    model, ds = tiny_source_and_data
    seen = []

    def extra(m):
        seen.append(m)
        return {"blocks": len(m.model.layers)}

    rows = perplexity_sweep(model, ds, [(0, 2), (0, 4)], batch_size=4, progress=False, extra_eval=extra)
    base = rows[0]["perplexity"]
    for r in rows:
        assert r["ppl_ratio"] == pytest.approx(r["perplexity"] / base)
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    # the source has 4 layers; one merged pair leaves 3 blocks, two leave 2
    assert [r["blocks"] for r in rows] == [4, 3, 2]
    assert seen[0] is model and all(m is not model for m in seen[1:])


@pytest.mark.parametrize("bad", [True, 2.0, 0])
def test_perplexity_sweep_refuses_a_batch_size_that_is_not_a_positive_int(tiny_source_and_data, bad):
    model, ds = tiny_source_and_data
    with pytest.raises(ValueError, match="batch_size"):
        perplexity_sweep(model, ds, [(0, 2)], batch_size=bad, progress=False)


def test_perplexity_sweep_refuses_a_non_callable_extra_eval(tiny_source_and_data):
    model, ds = tiny_source_and_data
    with pytest.raises(TypeError, match="extra_eval"):
        perplexity_sweep(model, ds, [(0, 2)], progress=False, extra_eval={"a": 1})


# --- choose_range / table / files --------------------------------------------------------------------------------
def test_choose_range_keeps_a_row_exactly_at_the_budget():
    rows = [
        dict(start=0, end=0, pairs=0, perplexity=8.0, ppl_ratio=1.0),
        dict(start=0, end=2, pairs=1, perplexity=10.0, ppl_ratio=1.25),
    ]
    assert choose_range(rows, 0.25) is rows[1]


def _rows_with_tasks():
    return [
        dict(start=0, end=0, pairs=0, effective_depth=4, perplexity=12.5, ppl_ratio=1.0, accuracy=0.5,
             task_scores={"t": 1234.5678}, retention=100.0),
        dict(start=0, end=2, pairs=1, effective_depth=3, perplexity=15.0, ppl_ratio=1.2, accuracy=0.25,
             task_scores={"t": 0.123456}, retention=float("nan")),
    ]  # fmt: skip


def test_format_sweep_table_cells():
    """Source row without a range; large task scores in 4 significant digits, small ones with 4 decimals; an
    undefined retention printed as n/a; the chosen row marked."""
    rows = _rows_with_tasks()
    lines = format_sweep_table(rows, rows[1], "acc").splitlines()
    assert lines[0] == "| pairs | range | effective depth | perplexity | x source | token acc. | t acc | retention % |"
    assert lines[2] == "| 0 | - | 4 | 12.500 | 1.000 | 0.5000 | 1235 | 100.0 |"
    assert lines[3] == "| 1 | [0, 2) * | 3 | 15.000 | 1.200 | 0.2500 | 0.1235 | n/a |"


def test_save_sweep_writes_the_note_and_refuses_to_overwrite_rows(tmp_path):
    rows = _rows_with_tasks()
    with pytest.raises(ValueError, match="rows"):
        save_sweep(rows, str(tmp_path / "x"), extra={"rows": []})
    paths = save_sweep(rows, str(tmp_path / "y"), note="Range given by hand.", extra={"sweep_suggestion": None})
    text = open(paths["md"]).read()
    assert text.endswith("\n\nRange given by hand.\n")


@pytest.mark.parametrize("pair", [[-1, 0], [4, 5]])
def test_resolve_pairs_refuses_indices_outside_the_model(pair):
    with pytest.raises(ValueError, match="out of range"):
        resolve_pairs(5, pairs=[pair])


# --- LayerParallelConfig -----------------------------------------------------------------------------------------
def test_mistral_sliding_window_makes_every_slot_a_sliding_layer():
    """A Mistral config has no `layer_types`; its `sliding_window` applies to every layer, hence to every slot."""
    from transformers import MistralConfig

    src = MistralConfig(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=4,
                        num_attention_heads=2, num_key_value_heads=1, sliding_window=4)  # fmt: skip
    config = LayerParallelConfig(source_config=src, lp_start=0, lp_end=2, lp_merged=False)
    assert config.layer_types == ["sliding_attention"] * 4 and config.num_hidden_layers == 4
    assert config.sliding_window == 4


@pytest.mark.parametrize(
    "field, value",
    [("lp_merged", False), ("attention_bias", True), ("lp_mlp_norm", "official_tp_split"), ("intermediate_size", 32)],
)
def test_a_saved_layout_refuses_an_edit_of_any_field_that_shapes_the_weights(field, value):
    config = LayerParallelConfig(source_config=_llama_cfg(), lp_start=0, lp_end=2)
    d = config.to_dict()
    if field.startswith("lp_"):
        d[field] = value
    else:
        d["source_config"][field] = value
        d.pop(field, None)
    with pytest.raises(ValueError, match="edited after its weight layout was recorded"):
        LayerParallelConfig.from_dict(d)


def test_config_refuses_unknown_mlp_norm_and_odd_tp_split():
    with pytest.raises(ValueError, match="lp_mlp_norm"):
        LayerParallelConfig(source_config=_llama_cfg(), lp_start=0, lp_end=2, lp_mlp_norm="shared")
    with pytest.raises(ValueError, match="even"):
        LayerParallelConfig(source_config=_llama_cfg(intermediate_size=25), lp_start=0, lp_end=2,
                            lp_mlp_norm="official_tp_split")  # fmt: skip


def test_config_refuses_pairs_that_disagree_with_the_range():
    with pytest.raises(ValueError, match="disagrees"):
        LayerParallelConfig(source_config=_llama_cfg(), lp_start=0, lp_end=2, lp_pairs=[[2, 3]])
    config = LayerParallelConfig(source_config=_llama_cfg(), lp_start=0, lp_end=4, lp_pairs=[[2, 3], [0, 1]])
    assert config.lp_pairs == [[0, 1], [2, 3]]


def test_per_slot_heads_and_effective_depth():
    """Merged pair: one slot with both layers' heads; unmerged: two slots; effective depth = layers - pairs."""
    src = _llama_cfg(num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, hidden_size=32)
    merged = LayerParallelConfig(source_config=src, lp_pairs=[[1, 2], [4, 5]])
    assert merged.kv_heads_per_slot() == [2, 4, 2, 4]
    assert merged.attention_heads_per_slot() == [4, 8, 4, 8]
    assert [c.num_key_value_heads for c in merged.per_layer_config] == [2, 4, 2, 4]
    assert merged.effective_depth == 4 and merged.num_hidden_layers == 4
    unmerged = LayerParallelConfig(source_config=src, lp_pairs=[[1, 2], [4, 5]], lp_merged=False)
    assert unmerged.kv_heads_per_slot() == [2] * 6 and unmerged.attention_heads_per_slot() == [4] * 6
    assert unmerged.effective_depth == 4 and unmerged.num_hidden_layers == 6


def test_a_merged_slot_view_never_writes_into_the_shared_source_config():
    config = LayerParallelConfig(source_config=_llama_cfg(), lp_start=0, lp_end=2)
    slot = config.per_layer_config[0]
    assert slot is not config and slot.num_key_value_heads == 2
    slot.pad_token_id = 9
    assert config.source_config.pad_token_id is None and config.pad_token_id is None


def test_tensor_parallel_plan_splits_inputs_columnwise_and_outputs_rowwise():
    """Megatron-style plan: q/k/v and gate/up split by output features, o_proj and down_proj by input features."""
    plan = LayerParallelConfig.base_model_tp_plan
    col = {f"layers.*.self_attn.{p}_proj" for p in "qkv"} | {"layers.*.mlp.gate_proj", "layers.*.mlp.up_proj"}
    row = {"layers.*.self_attn.o_proj", "layers.*.mlp.down_proj"}
    assert plan == {**dict.fromkeys(col, "colwise"), **dict.fromkeys(row, "rowwise")}
