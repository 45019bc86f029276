"""FP8 numerics (emulation), conversion coverage for every backend, bad input, and a short training parity run."""

import copy

import pytest
import torch

from hf_ext.fp8 import Fp8Linear, convert, fp8_bmm, fp8_converted_modules, fp8_target_modules, quantize_dequantize
from hf_ext.fp8.emulation import E4M3, E5M2, round_to_fp8
from hf_ext.models.fog import FogConfig

TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def tiny_fog(**kw):
    from hf_ext.models.fog import FogForCausalLM

    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**{**TINY, "intermediate_size": 96, **kw}))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**TINY, intermediate_size=128))


# --------------------------------------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_vectorised_rounding_is_bit_identical_to_torch_cast(dtype):
    torch.manual_seed(0)
    x = torch.randn(4096) * torch.exp2(torch.randint(-24, 20, (4096,)).float())
    x = torch.cat([x, torch.tensor([0.0, -0.0, 448.0, 464.0, 1e9, -1e9, 2.0**-10, 2.0**-17])])
    fmax = torch.finfo(dtype).max
    ref = x.clamp(-fmax, fmax).to(dtype).float()
    assert torch.equal(round_to_fp8(x, dtype), ref)
    assert torch.isfinite(quantize_dequantize(torch.tensor([1e6]), torch.tensor(1.0), E5M2)).all()  # saturates


def test_fp8_gemm_error_is_a_few_percent():
    torch.manual_seed(0)
    lin = torch.nn.Linear(128, 64, bias=False)
    fp8 = Fp8Linear.from_linear(copy.deepcopy(lin), scaling="current")
    x = torch.randn(256, 128, requires_grad=True)
    x8 = x.detach().clone().requires_grad_()
    y, y8 = lin(x), fp8(x8)
    rel = ((y8 - y).norm() / y.norm()).item()
    assert 0.005 < rel < 0.08  # really quantised, and close
    g = torch.randn_like(y)
    y.backward(g)
    y8.backward(g)
    for a, b in ((x.grad, x8.grad), (lin.weight.grad, fp8.weight.grad)):
        assert 0.005 < ((a - b).norm() / a.norm()).item() < 0.1


def test_emulated_current_scaling_matches_torchao_tensorwise():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(64, 96, bias=False), torch.nn.Linear(96, 32, bias=False))
    a, b = copy.deepcopy(lin), copy.deepcopy(lin)
    convert(a, "emulated", scaling="current")
    convert(b, "torchao", recipe="tensorwise", emulate=True)
    x = torch.randn(32, 64)
    torch.testing.assert_close(a(x), b(x), rtol=2e-3, atol=2e-4)


def test_delayed_scaling_history_updates_once_per_training_forward():
    torch.manual_seed(0)
    fp8 = Fp8Linear(32, 16, scaling="delayed", amax_history_len=4)
    for i in range(6):
        x = torch.randn(8, 32) * (i + 1)
        fp8(x).sum().backward()
        assert fp8.fp8_amax_history[0, 0].item() == pytest.approx(x.abs().max().item())
    assert (fp8.fp8_amax_history[:, 2] > 0).all()  # gradient amaxes recorded in backward
    fp8.eval()
    before = fp8.fp8_amax_history.clone()
    fp8(torch.randn(8, 32) * 100)
    assert torch.equal(before, fp8.fp8_amax_history)
    # with a history, scale comes from max over history: a 10x larger input saturates instead of rescaling
    fp8.train()
    big = torch.randn(8, 32) * 1000
    out = fp8(big)
    exact = big @ fp8.weight.t() + fp8.bias
    assert ((out - exact).norm() / exact.norm()).item() > 0.2


def test_fp8_bmm_gradients_flow_and_are_close():
    torch.manual_seed(0)
    a = torch.randn(2, 4, 16, 32, requires_grad=True)
    b = torch.randn(2, 4, 32, 16, requires_grad=True)
    out = fp8_bmm(a, b)
    ref = a @ b
    assert ((out - ref).norm() / ref.norm()).item() < 0.08
    out.sum().backward()
    assert a.grad is not None and b.grad is not None and torch.isfinite(a.grad).all()


# -------------------------------------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("backend", ["torchao", "emulated"])
@pytest.mark.parametrize("make, per_layer", [(tiny_fog, 6), (tiny_llama, 7)])
def test_every_block_linear_is_converted_and_head_stays_high_precision(backend, make, per_layer):
    model = make()
    convert(model, backend)
    names = fp8_converted_modules(model)
    assert len(names) == per_layer * 2  # q, k, v, o + (up, down) or (gate, up, down) per layer
    assert all(".layers." in n for n in names)
    assert type(model.lm_head) is torch.nn.Linear
    ids = torch.randint(0, 128, (2, 16))
    out = model(ids, labels=ids)
    out.loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None
    with_head = make()
    convert(with_head, backend, include_lm_head=True)
    assert len(fp8_converted_modules(with_head)) == per_layer * 2 + 1


def test_fp8_attention_switches_attention_and_stays_close():
    model = tiny_fog()
    ref = copy.deepcopy(model)
    linears_only = convert(copy.deepcopy(model), "emulated", scaling="current")
    convert(model, "emulated", scaling="current", fp8_attention=True)
    assert model.config._attn_implementation == "fp8_emulated"
    assert linears_only.config._attn_implementation != "fp8_emulated"
    ids = torch.randint(0, 128, (2, 24))
    with torch.no_grad():
        a, b, c = model(ids).logits, ref(ids).logits, linears_only(ids).logits
    assert ((a - b).norm() / b.norm()).item() < 0.1
    assert not torch.equal(a, c)  # the attention BMMs are quantised too
    # causal: changing a later token does not change earlier logits
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 128
    with torch.no_grad():
        torch.testing.assert_close(model(ids2).logits[:, :-1], a[:, :-1])


def test_conversion_bad_input():
    with pytest.raises(ValueError, match="backend='cuda'"):
        convert(tiny_fog(), "cuda")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        convert("model")
    with pytest.raises(ValueError, match="recipe='blockwise'"):
        convert(tiny_fog(), recipe="blockwise")
    with pytest.raises(ValueError, match="fp8_attention"):
        convert(tiny_fog(), "torchao", fp8_attention=True)
    odd = tiny_fog(hidden_size=72, num_attention_heads=4, intermediate_size=100)
    with pytest.raises(ValueError, match="divisible by 16"):
        convert(odd, "torchao")
    with pytest.raises(ValueError, match="divisible by 16"):
        convert(tiny_fog(hidden_size=72, num_attention_heads=4, intermediate_size=100), "emulated")
    convert(odd, "torchao", pad_inner_dim=True)
    ids = torch.randint(0, 128, (2, 8))
    odd(ids, labels=ids).loss.backward()
    with pytest.raises(ValueError, match="already has FP8"):
        convert(odd, "torchao", pad_inner_dim=True)


@pytest.mark.parametrize(
    "switch", ["include_lm_head", "fp8_attention", "pad_inner_dim", "emulate", "fsdp_float8_all_gather"]
)
def test_conversion_switches_must_be_booleans(switch):
    """A string "False" (from YAML or a command line) used to read as True: the head or attention went FP8 (or,
    torchao tensorwise, the FSDP2 all-gather). The torchao-only switches are tried with torchao, where they apply."""
    model = tiny_fog()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=f"{switch} must be True or False"):
        torchao_only = switch in ("emulate", "fsdp_float8_all_gather")
        convert(model, "torchao" if torchao_only else "emulated", recipe="tensorwise", **{switch: "False"})
    assert not fp8_converted_modules(model) and model.config._attn_implementation != "fp8_emulated"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("backend", ["torchao", "emulated"])
def test_conversion_of_a_sharded_model_is_a_clear_error(backend):
    """A model loaded with tensor parallelism (or wrapped by FSDP2) holds DTensor weights; converting it would build
    FP8 layers around shards. `convert` refuses before changing anything and names the order that works."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = tiny_fog()
        mesh = init_device_mesh("cpu", (1,))
        proj = model.model.layers[0].mlp.up_proj
        proj.weight = torch.nn.Parameter(distribute_tensor(proj.weight.detach(), mesh, [Shard(0)]))
        with pytest.raises(ValueError, match=r"model.layers.0.mlp.up_proj .*sharded weights.*Convert the unsharded"):
            convert(model, backend)
        assert not fp8_converted_modules(model)
    finally:
        dist.destroy_process_group()


def test_te_backend_missing_or_cpu_is_a_clear_error():
    try:
        import transformer_engine  # noqa: F401

        expected = ValueError
    except ImportError:
        expected = ImportError
    with pytest.raises(expected, match="Transformer Engine|CUDA"):
        convert(tiny_fog(), "te")


@pytest.mark.gpu
def test_te_backend_converts_every_block_linear_on_gpu():
    pytest.importorskip("transformer_engine.pytorch", reason="the te backend needs Transformer Engine")
    model = tiny_fog().cuda().to(torch.bfloat16)
    convert(model, "te")
    assert len(fp8_converted_modules(model)) == 12
    ids = torch.randint(0, 128, (8, 32), device="cuda")
    model(ids, labels=ids).loss.backward()


def test_accelerate_ao_recipe_converts_all_block_linears():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from hf_ext.fp8 import ao_recipe_kwargs

    model = tiny_fog()
    AcceleratorState._reset_state(True)  # whatever an earlier test's Trainer left behind
    GradientState._reset_state()
    try:
        acc = Accelerator(mixed_precision="fp8", cpu=True, kwargs_handlers=[ao_recipe_kwargs(model)])
        prepared = acc.prepare(model)
        names = fp8_converted_modules(acc.unwrap_model(prepared))
        assert sorted(names) == sorted(fp8_target_modules(tiny_fog()))
        assert len(names) == 12 and type(acc.unwrap_model(prepared).lm_head) is torch.nn.Linear
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


# --------------------------------------------------------------------------------------------------------- training
def _train(model, batches, lr=3e-3, autocast=False):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    losses = []
    for ids in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


SMALL = dict(vocab_size=512, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=48)


@pytest.fixture(scope="module")
def token_batches(corpus, small_tokenizer):
    from hf_ext.data import pack_dataset

    ds = pack_dataset(corpus.select(range(100)), small_tokenizer, block_size=32)
    ids = torch.tensor(ds["input_ids"][: 50 * 4])
    return [ids[i * 4 : (i + 1) * 4] for i in range(50)]


@pytest.fixture(scope="module")
def bf16_losses(token_batches):
    return _train(tiny_fog(**SMALL), token_batches, autocast=True)


@pytest.mark.parametrize("backend", ["torchao", "emulated"])
def test_fifty_fp8_steps_track_bf16_within_five_percent(token_batches, bf16_losses, backend):
    model = tiny_fog(**SMALL)
    convert(model, backend)
    fp8 = _train(model, token_batches)
    tail_bf16, tail_fp8 = sum(bf16_losses[-5:]) / 5, sum(fp8[-5:]) / 5
    assert tail_bf16 < bf16_losses[0] * 0.85  # it learned something
    assert abs(tail_fp8 - tail_bf16) / tail_bf16 < 0.05


def test_fp8_trainer_under_accelerate_fp8_converts_every_block_linear(tmp_path, monkeypatch, token_batches):
    import datasets
    from accelerate.state import AcceleratorState, GradientState
    from transformers import TrainingArguments, default_data_collator

    from hf_ext.fp8 import Fp8Trainer

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")  # what `accelerate launch --mixed_precision fp8` sets
    model = tiny_fog(**SMALL)
    rows = torch.cat(token_batches[:2]).tolist()
    ds = datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    try:
        trainer = Fp8Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)
        assert trainer.args.mixed_precision == "fp8"
        trainer.train()
        converted = fp8_converted_modules(trainer.accelerator.unwrap_model(trainer.model_wrapped))
        assert len(converted) == 12 and not any("lm_head" in n for n in converted)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_te_fp8_only_where_gemm_rows_allow():
    from hf_ext.fp8 import te_fp8_shape_ok
    from hf_ext.fp8.convert import _token_rows

    assert te_fp8_shape_ok(8 * 32) and te_fp8_shape_ok(None)
    assert not te_fp8_shape_ok(3)  # a 3-sequence generate() decode step: 3 GEMM rows
    assert _token_rows((torch.zeros(3, 1, dtype=torch.long),), {}) == 3
    assert _token_rows((), {"inputs_embeds": torch.zeros(2, 5, 16)}) == 10
    # GEMM rows are tokens (batch x sequence), not sequences: a (4, 6) batch has 24 rows, FP8-capable, 4 would not be
    assert _token_rows((torch.zeros(4, 6, dtype=torch.long),), {}) == 24
    assert _token_rows((), {"input_ids": torch.zeros(2, 3, dtype=torch.long)}) == 6
    # the rule is a multiple of 8 rows (TE's FP8 GEMM), not of 16
    assert te_fp8_shape_ok(24) and te_fp8_shape_ok(8)
    assert not te_fp8_shape_ok(12) and not te_fp8_shape_ok(4)


@pytest.mark.gpu
def test_te_backend_generates_and_evaluates_with_odd_shapes_on_gpu():
    pytest.importorskip("transformer_engine.pytorch", reason="the te backend needs Transformer Engine")
    model = tiny_fog().cuda().to(torch.bfloat16)
    convert(model, "te")
    model.eval()
    with torch.no_grad():
        model(torch.randint(0, 128, (3, 7), device="cuda"))  # 21 rows: runs in BF16, no TE assertion
        out = model.generate(torch.randint(0, 128, (3, 8), device="cuda"), max_new_tokens=4, do_sample=False)
    assert out.shape == (3, 12)


@pytest.mark.parametrize("tie", [False, True])
def test_resize_after_convert_replaces_an_untied_fp8_head_as_docs_say(tie):
    """docs/fp8.md: resize the vocabulary before converting; resizing after `convert(include_lm_head=True)` gives an
    untied model a high-precision head (no longer listed), a tied head stays converted."""
    import pathlib

    from hf_ext.fp8 import convert, fp8_converted_modules
    from hf_ext.models.fog import FogConfig, FogForCausalLM

    docs = pathlib.Path(__file__).resolve().parents[2] / "docs" / "fp8.md"
    assert "Resize the vocabulary before converting" in docs.read_text(encoding="utf-8")
    torch.manual_seed(0)
    cfg = FogConfig.fog(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, tie_word_embeddings=tie)  # fmt: skip
    model = FogForCausalLM(cfg)
    convert(model, "emulated", include_lm_head=True)
    assert "lm_head" in fp8_converted_modules(model)
    model.resize_token_embeddings(80, mean_resizing=False)
    assert ("lm_head" in fp8_converted_modules(model)) is tie
