"""Fixtures for the influence tests: tiny peft LoRA models built from configs."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Per-example gradients of tiny models are dominated by thread start-up on a busy 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _reference_lora_gradients(model, examples):
    """One float64 backward per example, alone; lora_B transposed as the estimator tracks it."""
    from hf_ext.hyperinf import tracked_lora_parameters

    tracked, params = tracked_lora_parameters(model), dict(model.named_parameters())
    out = {m.name: [] for m in tracked}
    for example in examples:
        model.zero_grad()
        model(**{key: torch.tensor([value]) for key, value in example.items()}).loss.backward()
        for m in tracked:
            grad = params[m.name].grad.detach()
            out[m.name].append((grad.T if m.kind == "lora_B" else grad).reshape(m.shape))
    model.zero_grad()
    return {name: torch.stack(values) for name, values in out.items()}


@pytest.fixture
def reference_lora_gradients():
    """The per-example backward reference of the tracked LoRA gradients (a function of `(model, examples)`)."""
    return _reference_lora_gradients


def _randomize_lora_b(model, seed=1, std=0.2):
    """peft starts LoRA B at zero (every lora_A gradient is then zero): give the adapter a trained-like state."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(std * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return model


def small_llama_config(**overrides):
    """A 1-layer Llama config (vocab 50, width 16, 2 heads sharing one KV head, pad id 0); `overrides` on top."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        **overrides,
    )


@pytest.fixture
def randomize_lora_b():
    """A function `(model, seed=1, std=0.2)` setting every LoRA B factor to Gaussian values (returns the model)."""
    return _randomize_lora_b


@pytest.fixture
def one_process_group():
    """A gloo group of world size 1 in this process (torn down after the test)."""
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield dist.group.WORLD
    dist.destroy_process_group()
