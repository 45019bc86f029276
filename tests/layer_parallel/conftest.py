"""Shared fixtures: a small GQA Llama (5 layers, 4 heads, 2 KV heads, eager attention), a batch of token ids,
`scripts/bench_layer_parallel.py` loaded as a module, and `lp_two_ranks`: the layer-parallel checks on 2 gloo ranks
(tensor parallelism, FSDP2 state-dict loading, the recipe under DDP) in ONE `torchrun --nproc_per_node 2` launch of
tests/scripts/checks_in_turn.py that the modules checking them share (`checks_in_turn_launch` of tests/conftest.py).
A test module may define its own `source` / `ids`, which then take precedence."""

import importlib.util
import sys

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=0.2,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="session")
def recipe_loaded():
    """Arguments of a tiny `layer_parallel` recipe run that converts a saved `--model_name_or_path`, on CPU: those of
    `recipe_tiny` without the small Llama's shape and vocabulary (refused with `--model_name_or_path`) and without
    `--per_device_train_batch_size` (refused with `--model_name_or_path --finetune false`, which trains nothing; a
    run that fine-tunes adds it)."""
    return [
        "--block_size", "32", "--max_eval_blocks", "8", "--per_device_eval_batch_size", "8", "--disable_tqdm", "true",
        "--report_to", "none", "--use_cpu", "true",
    ]  # fmt: skip


@pytest.fixture(scope="session")
def recipe_tiny(recipe_loaded):
    """Arguments of a tiny `layer_parallel` recipe run: a 4-layer GQA Llama on the embedded corpus, on CPU."""
    return [
        "--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
        "--num_key_value_heads", "1", "--vocab_size", "512", "--per_device_train_batch_size", "4", *recipe_loaded,
    ]  # fmt: skip


@pytest.fixture
def bench(repo_root):
    """`scripts/bench_layer_parallel.py` as a freshly loaded module (the scripts folder is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "bench_layer_parallel", f"{repo_root}/scripts/bench_layer_parallel.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


#: the checks that tests/scripts/checks_in_turn.py runs, in this order (the recipe, which tears the group down, last)
TWO_RANK_CHECKS = ("tp_layer_parallel", "fsdp2_split_load", "recipe")
#: the recipe check's arguments besides `recipe_tiny` (and `--output_dir`)
TWO_RANK_RECIPE_ARGS = [
    "--pretrain_steps", "8", "--max_steps", "4", "--pair_counts", "1,2", "--max_ppl_increase", "100", "--logging_steps",
    "1", "--max_eval_blocks", "5", "--per_device_eval_batch_size", "2", "--eval_strategy", "steps", "--eval_steps", "4",
]  # fmt: skip


@pytest.fixture
def lp_two_ranks(checks_in_turn_launch, recipe_tiny):
    """`lp_two_ranks(check)`: `(folder, stdout)` of one of `TWO_RANK_CHECKS`, all run in ONE launch per test session
    (a launch costs each rank ~10 s of torch / transformers / peft imports; each check used to be a launch of its own).
    The recipe check runs hf_ext.recipes.layer_parallel with `recipe_tiny` and `TWO_RANK_RECIPE_ARGS`. The test fails,
    naming the check, unless both ranks finished that check."""
    recipe = ("hf_ext.recipes.layer_parallel", *recipe_tiny, *TWO_RANK_RECIPE_ARGS)
    return checks_in_turn_launch("lp_two_ranks", "layer_parallel", TWO_RANK_CHECKS, recipe=recipe, timeout=1200)
