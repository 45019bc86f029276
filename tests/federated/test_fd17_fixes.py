"""fd17: merge_then_average merges LoRA deltas as PEFT does (GPT-2 Conv1D / fan_in_fan_out, embedding LoRA, other
variants refused), split_index draws as the cited reference, and bad memorization / aggregation arguments are
refused by name."""

import copy
import random
import warnings

import numpy as np
import pytest
import torch

import hf_ext.federated.simulation as simulation
from hf_ext.federated import (
    FederatedArguments,
    FederatedSimulation,
    aggregate_round,
    apply_lora,
    exchange_keys,
    fan_in_fan_out_modules,
    get_exchange_state,
    set_exchange_state,
)
from hf_ext.federated.flower import _initial_state_and_layout

from .conftest import tiny_llama


def tiny_gpt2(vocab_size: int = 50, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=vocab_size, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    return GPT2LMHeadModel(cfg)


def _lora(model, targets: str):
    fed = FederatedArguments(aggregation="merge_then_average", lora_r=2, lora_alpha=4.0, lora_target_modules=targets)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft's fan_in_fan_out note for Conv1D
        return apply_lora(model, fed, seed=0), fed


def _merged(model, state) -> dict[str, torch.Tensor]:
    m = copy.deepcopy(model)
    set_exchange_state(m, state)
    return {n: p.detach().double() for n, p in m.merge_and_unload().named_parameters()}


def _perturbed_clients(model, keys, n=2, seed=1):
    gen = torch.Generator().manual_seed(seed)
    g = get_exchange_state(model, keys)
    return g, [
        {k: v + 0.5 * torch.randn(v.shape, generator=gen) if "lora_" in k else v.clone() for k, v in g.items()}
        for _ in range(n)
    ]


def _check_global_is_average_of_merged(model, g, clients, weights, new_state, atol=1e-6, min_moved=0.1):
    merged = [_merged(model, c) for c in clients]
    total = float(sum(weights))
    ref = {n: sum(w / total * m[n] for w, m in zip(weights, merged)) for n in merged[0]}
    got = _merged(model, new_state)
    worst = max(float((got[n] - ref[n]).abs().max()) for n in ref)
    assert worst < atol, worst
    moved = max(float((got[n] - _merged(model, g)[n]).abs().max()) for n in ref)
    assert moved > min_moved and moved > 100 * atol  # the check is not vacuous
    for k in g:  # the adapter is reset to the round start
        if "lora_" in k:
            assert torch.equal(new_state[k], g[k]), k


def test_gpt2_conv1d_merge_then_average_equals_average_of_merged_clients():
    model, fed = _lora(tiny_gpt2(), "c_attn,c_proj")
    keys = exchange_keys(model, fed.mode)
    layout = fan_in_fan_out_modules(model, fed.lora_scaling)
    # every adapted module is a Conv1D: attn.c_attn (16 -> 48), attn.c_proj and mlp.c_proj
    assert sorted(p.split("h.0.")[1] for p in layout) == ["attn.c_attn", "attn.c_proj", "mlp.c_proj"]
    g, clients = _perturbed_clients(model, keys)
    new = aggregate_round(g, clients, [3, 1], fed.mode, fed.lora_scaling, fan_in_fan_out=layout)
    _check_global_is_average_of_merged(model, g, clients, [3, 1], new)
    # the server step shared by the simulation and the Flower ServerApp
    new2 = simulation.aggregate_uploads(g, clients, [3, 1], fed, 1, fan_in_fan_out=layout)
    assert all(torch.equal(new[k], new2[k]) for k in new)
    # a non-square Conv1D update passed without its layout is refused with the fix in the message
    with pytest.raises(ValueError, match="fan_in_fan_out"):
        aggregate_round(g, clients, [3, 1], fed.mode, fed.lora_scaling)
    with pytest.raises(ValueError, match="not LoRA modules"):
        aggregate_round(g, clients, [3, 1], fed.mode, fed.lora_scaling, fan_in_fan_out=["nope.c_attn"])
    # the Flower server and SecAgg+ clients get the layout of the model they build
    state, flower_layout = _initial_state_and_layout(tiny_gpt2, fed, 0)
    assert flower_layout == layout and sorted(state) == sorted(keys)


def test_llama_embedding_lora_is_merged_into_embed_tokens_and_reset():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            tie_word_embeddings=False,
        )
    )
    model, fed = _lora(base, "embed_tokens,q_proj")
    keys = exchange_keys(model, fed.mode)
    assert "base_model.model.model.embed_tokens.base_layer.weight" in keys
    assert fan_in_fan_out_modules(model, fed.lora_scaling) == []
    g, clients = _perturbed_clients(model, keys)
    new = aggregate_round(g, clients, [1, 2], fed.mode, fed.lora_scaling)
    _check_global_is_average_of_merged(model, g, clients, [1, 2], new)


def test_simulation_round_on_gpt2_merges_conv1d_deltas(small_tokenizer, client_datasets, training_args, monkeypatch):
    """One FederatedSimulation round (real local training) on GPT-2 c_attn + c_proj: the global model is the
    example-weighted average of the clients' merged models (the old code stopped with a shape error)."""
    model = tiny_gpt2(vocab_size=len(small_tokenizer))
    fed = FederatedArguments(
        num_rounds=1,
        local_steps=1,
        aggregation="merge_then_average",
        lora_r=2,
        lora_alpha=4.0,
        lora_target_modules="c_attn,c_proj",
    )
    seen = []
    real = simulation.prepare_upload

    def recording(global_state, client_state, fed_args, *args, **kwargs):
        seen.append({k: v.clone() for k, v in client_state.items()})
        return real(global_state, client_state, fed_args, *args, **kwargs)

    monkeypatch.setattr(simulation, "prepare_upload", recording)
    datasets = client_datasets[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = FederatedSimulation(model, datasets, fed, training_args)
    assert len(sim.fan_in_fan_out) == 3
    g = {k: v.clone() for k, v in sim.global_state.items()}
    sim.run()
    weights = [len(d) for d in datasets]
    _check_global_is_average_of_merged(
        copy.deepcopy(sim.model), g, seen, weights, sim.global_state, atol=1e-6, min_moved=1e-3
    )


def test_merge_then_average_refuses_lora_variants_it_cannot_merge():
    from peft import LoraConfig, get_peft_model

    dora = get_peft_model(tiny_llama(40), LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        exchange_keys(dora, "merge_then_average")
    exchange_keys(dora, "factors")  # factor averaging still federates it
    rs = get_peft_model(tiny_llama(40), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_rslora=True))
    with pytest.raises(ValueError, match="use_rslora"):
        fan_in_fan_out_modules(rs, 8 / 4)
    torch.manual_seed(0)
    g = {
        "m.lora_A.weight": torch.randn(2, 5),
        "m.lora_B.weight": torch.zeros(4, 2),
        "m.lora_magnitude_vector": torch.ones(4),
        "m.base_layer.weight": torch.randn(4, 5),
    }
    with pytest.raises(ValueError, match=r"client_states\[0\].*lora_magnitude_vector.*DoRA"):
        aggregate_round(g, [g, g], [1, 1], "merge_then_average", 2.0)
    g2 = {k: v for k, v in g.items() if "magnitude" not in k} | {"m.lora_B.bias": torch.zeros(4)}
    with pytest.raises(ValueError, match="LoRA bias"):
        aggregate_round(g2, [g2, g2], [1, 1], "merge_then_average", 2.0)


def test_split_index_draws_as_the_reference_np_randint():
    """The reference (create_prompts) draws np.random.randint(max(L), T - window), whose upper bound is excluded, and
    skips T <= max(L) + window."""
    from hf_ext.federated import split_index

    rng = random.Random(0)
    assert split_index(550, 500, 50, rng) is None
    draws = {split_index(560, 500, 50, rng) for _ in range(5000)}
    ref = {int(x) for x in np.random.default_rng(0).integers(500, 560 - 50, size=5000)}  # high excluded, as randint
    assert draws == ref == set(range(500, 510))
    assert split_index(551, 500, 50, rng) == 500


def test_recipe_refuses_canaries_that_split_index_would_skip():
    from types import SimpleNamespace

    from hf_ext.recipes.federated import check_canary_lengths

    def tok(text, add_special_tokens=False):
        return {"input_ids": list(range(len(text.split())))}

    args = SimpleNamespace(window=5, block_size=64)
    with pytest.raises(ValueError, match="fewer than 16 tokens"):  # 15 = 10 + 5 would be skipped
        check_canary_lengths([SimpleNamespace(text="w " * 15)], tok, [2, 10], args)
    check_canary_lengths([SimpleNamespace(text="w " * 16)], tok, [2, 10], args)


def test_bad_memorization_and_aggregation_arguments_are_refused_by_name():
    from hf_ext.federated import measure_memorization, score_continuation

    class Tok:
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

        def decode(self, ids):
            return "".join(map(chr, ids))

    for window in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="`window` must be an integer >= 1"):
            score_continuation(Tok(), "alpha beta", "zzz", window=window)
    for threshold in (2.0, 0.0, -0.5, float("nan"), True):
        with pytest.raises(ValueError, match=r"`bleu_threshold` must be a number in \(0, 1\]"):
            score_continuation(Tok(), "alpha beta", "alpha beta", bleu_threshold=threshold)
    assert score_continuation(Tok(), "alpha beta", "alpha beta", window=10, bleu_threshold=1.0)["approximate"]
    for lengths in ([5.9], [5, 0], [True], "5"):
        with pytest.raises(ValueError, match="`prefix_lengths` must be positive integers"):
            measure_memorization(None, None, [object()], prefix_lengths=lengths, window=5)
    torch.manual_seed(0)
    g = {
        "m.lora_A.weight": torch.randn(2, 5),
        "m.lora_B.weight": torch.zeros(4, 2),
        "m.base_layer.weight": torch.randn(4, 5),
    }
    cs = [{k: v + 0.1 * torch.randn_like(v) if "lora" in k else v.clone() for k, v in g.items()} for _ in range(2)]
    for scaling in (0.0, -2.0, True, float("nan"), float("inf"), "2"):
        with pytest.raises(ValueError, match="`lora_scaling` must be a finite real number > 0"):
            aggregate_round(g, cs, [1, 1], "merge_then_average", scaling)
    assert not torch.equal(
        aggregate_round(g, cs, [1, 1], "merge_then_average", 2)["m.base_layer.weight"], g["m.base_layer.weight"]
    )
