"""Audit pass 35 (hi41): bad inputs of the public HyperINF helpers refused early, naming the argument."""

import numpy as np
import pytest
import torch

from hf_ext.hyperinf import (
    InfluenceConfig,
    InfluenceEngine,
    PeakMemory,
    detection_curve,
    fim,
    gfim,
    influence_from_gradients,
    lissa_hvp,
    lissa_hvp_reference,
    recall_at_fraction,
    roc_auc,
    select_lowest_influence,
)


def test_select_lowest_influence_refuses_a_matrix_of_scores():
    """A (num_eval, num_train) matrix was flattened: the returned indices pointed into the flattened matrix, beyond
    the training set (here index 5 of a 3-example set)."""
    scores = np.array([[3.0, 2.0, 1.0], [0.5, 0.2, 0.1]])  # one row per evaluation example
    with pytest.raises(ValueError, match="`scores` must hold one score per training example"):
        select_lowest_influence(scores, 0.34)
    np.testing.assert_array_equal(select_lowest_influence(scores.mean(axis=0), 0.34), [2])
    np.testing.assert_array_equal(select_lowest_influence(scores[:1], 0.34), [2])  # a (1, n) row is one set
    with pytest.raises(ValueError, match="`groups` must hold one group id per training example"):
        select_lowest_influence(np.arange(4.0), 0.5, groups=[[0, 1], [0, 1]])


def test_metrics_refuse_a_matrix_of_scores():
    """`detection_curve`/`recall_at_fraction`/`roc_auc` flattened a 2-D score matrix, mixing its rows, whenever
    `is_noisy` had as many entries as the matrix."""
    scores = np.array([[3.0, 2.0], [0.5, 0.2]])
    is_noisy = np.array([[True, False], [False, True]])
    for call in (
        lambda: detection_curve(scores, is_noisy),
        lambda: recall_at_fraction(scores, is_noisy, 0.5),
        lambda: roc_auc(scores, is_noisy),
    ):
        with pytest.raises(ValueError, match="`scores` must hold one score per training example"):
            call()
    assert roc_auc(scores[0], is_noisy[0]) == 1.0


@pytest.mark.parametrize("interval", [0, -1.0, float("nan"), float("inf"), "0.01", None])
def test_peak_memory_refuses_a_bad_interval(interval):
    """0 made the sampling thread spin; a negative interval made `time.sleep` raise in the thread, which died without
    a word and left the peak to the samples at entry and exit."""
    with pytest.raises(ValueError, match="`interval`"):
        PeakMemory(interval=interval)
    PeakMemory(interval=np.float64(0.01))  # numpy numbers are numbers


@pytest.mark.parametrize(
    "shapes", [{"a": (2,)}, {"a": (2, -1)}, {"a": (0, 3)}, {"a": (2.0, 3)}, {"a": "2x3"}, {"a": (1, 2, 3)}]
)
def test_engine_refuses_bad_shapes(shapes):
    """A 1-D shape failed with a raw IndexError; a zero or negative size was accepted until the first batch."""
    with pytest.raises(ValueError, match=r"`shapes\['a'\]`"):
        InfluenceEngine(InfluenceConfig(), shapes)


def test_engine_refuses_bad_config_and_shapes_types():
    with pytest.raises(TypeError, match="`config` must be an InfluenceConfig"):
        InfluenceEngine(None, {"a": (2, 3)})
    with pytest.raises(TypeError, match="`shapes` must be a mapping"):
        InfluenceEngine(InfluenceConfig(), [(2, 3)])
    engine = InfluenceEngine(InfluenceConfig(), {"a": torch.Size([2, 3])})  # a torch.Size is a shape
    assert engine.shapes == {"a": (2, 3)}


def test_influence_from_gradients_refuses_non_tensors():
    """A list of gradients failed with a raw AttributeError."""
    g = torch.randn(4, 2, 3)
    with pytest.raises(TypeError, match=r"`train_grads\['a'\]` must be a torch.Tensor"):
        influence_from_gradients({"a": g.tolist()}, {"a": g})
    with pytest.raises(TypeError, match=r"`eval_grads\['a'\]` must be a torch.Tensor"):
        influence_from_gradients({"a": g}, {"a": g.tolist()})
    with pytest.raises(TypeError, match="`eval_grads` must be a mapping"):
        influence_from_gradients({"a": g}, [g])


def test_dense_helpers_refuse_bad_inputs():
    v, g = torch.randn(2, 3, dtype=torch.float64), torch.randn(5, 2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="`grads` must be a torch.Tensor"):
        gfim(g.tolist())
    with pytest.raises(ValueError, match="`grads` holds NaN or inf"):
        gfim(torch.full((2, 2, 2), float("nan")))
    with pytest.raises(TypeError, match="`grads` must be a floating-point tensor"):
        fim(torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="`matvec` must be a callable"):
        lissa_hvp(v, None, 0.1, 10.0)
    # the reference recursion: a negative depth returned `v` itself, a transposed `grads` ran on another matrix
    with pytest.raises(ValueError, match="`num_iterations` must be a positive int"):
        lissa_hvp_reference(v, g, 0.1, num_iterations=-1)
    with pytest.raises(ValueError, match=r"`grads` must have shape \(n, \*v.shape\)"):
        lissa_hvp_reference(v, g.transpose(1, 2), 0.1)
    assert lissa_hvp_reference(v, g, 0.1, num_iterations=2).shape == v.shape


def _tiny_causal_lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    return LlamaForCausalLM(config)


def test_evaluate_response_loss_refuses_examples_without_a_response_token():
    """An example whose labels are all -100 counted as a loss of 0 in `example_loss` (here the mean halved); a dataset
    of only such examples failed with a ZeroDivisionError; `batch_size=0` with a raw range() error."""
    from hf_ext.hyperinf.selection import evaluate_response_loss

    model = _tiny_causal_lm()
    answered = {"input_ids": [1, 2, 3, 4], "labels": [-100, -100, 3, 4]}
    silent = {"input_ids": [5, 6, 7], "labels": [-100, -100, -100]}
    alone = evaluate_response_loss(model, [answered])
    with pytest.raises(ValueError, match="example 1 of `dataset` has no response token"):
        evaluate_response_loss(model, [answered, silent])
    with pytest.raises(ValueError, match="example 0 of `dataset` has no response token"):
        evaluate_response_loss(model, [silent])
    for bad in (0, -1, 2.0):
        with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
            evaluate_response_loss(model, [answered], batch_size=bad)
    model.train()
    with pytest.raises(ValueError):
        evaluate_response_loss(model, [silent])
    assert model.training  # the mode is restored on error too
    assert alone["example_loss"] == pytest.approx(alone["loss"])


def test_per_example_gradients_refuses_bad_arguments():
    """A negative `batch_size` made `iterate` yield no batch at all (the examples silently dropped), 0 failed with a
    raw range() error; a bad `dtype`, `tracked` or `data_collator` failed only at the first batch."""
    from peft import LoraConfig, get_peft_model

    from hf_ext.hyperinf import PerExampleGradients, tracked_lora_parameters

    model = get_peft_model(_tiny_causal_lm(), LoraConfig(r=2, target_modules=["q_proj"]))
    tracked = tracked_lora_parameters(model)
    rows = [{"input_ids": [1, 2, 3]}, {"input_ids": [4, 5, 6]}]
    for bad in (-1, 0, 1.5, True):
        with pytest.raises(ValueError, match="`batch_size` must be a positive int"):
            PerExampleGradients(model, tracked, batch_size=bad)
    with pytest.raises(TypeError, match="`dtype` must be a floating torch.dtype"):
        PerExampleGradients(model, tracked, dtype=torch.int64)
    with pytest.raises(TypeError, match="`tracked` must be a non-empty list of TrackedMatrix"):
        PerExampleGradients(model, [])
    with pytest.raises(TypeError, match="`tracked` must be a non-empty list of TrackedMatrix"):
        PerExampleGradients(model, ["base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"])
    other = get_peft_model(_tiny_causal_lm(), LoraConfig(r=2, target_modules=["v_proj"]))
    with pytest.raises(ValueError, match="`tracked` names parameters that `model` does not have"):
        PerExampleGradients(model, tracked_lora_parameters(other))
    with pytest.raises(TypeError, match="`data_collator` must be a callable"):
        PerExampleGradients(model, tracked, data_collator="pad")
    batches = list(PerExampleGradients(model, tracked, batch_size=1).iterate(rows))
    assert sum(next(iter(b.values())).shape[0] for b in batches) == 2


@pytest.mark.parametrize("field, value", [("max_train", -5), ("num_target", 0), ("num_test", 2.5), ("max_train", None)])
def test_build_instruction_task_refuses_bad_split_sizes(field, value):
    """A negative `max_train` sliced from the end of the rows (`rows[:-5]`), a float failed with Python's slice message
    (hi41 left-alone: the recipe checks its flags first, the direct call did not)."""
    from hf_ext.data import build_tokenizer
    from hf_ext.hyperinf.selection import build_instruction_task

    with pytest.raises(ValueError, match=rf"^`{field}` must be an int >= 1 \(documents\)"):
        build_instruction_task(build_tokenizer(512), seed=0, prompt_tokens=8, answer_tokens=4, **{field: value})
