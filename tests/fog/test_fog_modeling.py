"""FOG architecture: config checks, structure, init, logit bound, xIELU, generation, save/load, authors' checkpoints."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from hf_ext.models.fog import FogConfig

TINY = dict(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def fog(**kw):
    return FogConfig.fog(**{**TINY, "intermediate_size": 96, **kw})


def llama(**kw):
    return FogConfig.llama_baseline(**{**TINY, "intermediate_size": 64, **kw})


def build(config, attn="eager"):
    from hf_ext.models.fog import FogForCausalLM

    torch.manual_seed(0)
    return FogForCausalLM._from_config(config, attn_implementation=attn).eval()


# ------------------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pre_norm=True, post_norm=True), "pre_norm=True and post_norm=True"),
        (dict(hidden_size=60, num_attention_heads=8), "must divide hidden_size"),
        (dict(num_key_value_heads=3), "num_key_value_heads=3"),
        (dict(hidden_act="relu"), "unknown hidden_act='relu'"),
        (dict(qk_norm="layer"), "unknown qk_norm"),
        (dict(softmax_scale=0.0), "softmax_scale"),
        (dict(xielu_alpha_n_init=0.4), "xielu_alpha_n_init"),
        (dict(num_hidden_layers=0), "num_hidden_layers"),
    ],
)
def test_bad_configs_raise_clear_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FogConfig(**{**TINY, **kwargs})


def test_named_recipes_and_equal_parameter_budget():
    f = FogConfig.fog(swiglu_intermediate_size=128, **TINY)
    b = FogConfig.llama_baseline(swiglu_intermediate_size=128, **TINY)
    assert (f.pre_norm, f.post_norm, f.qk_norm, f.freeze_qk_gain, f.softmax_scale) == (False, True, "rms", True, 0.125)
    assert (f.input_upscale, f.final_layernorm, f.hidden_act, f.layerscale) == (50.0, False, "xielu", True)
    assert (b.pre_norm, b.post_norm, b.qk_norm, b.softmax_scale, b.final_layernorm) == (
        True,
        False,
        "none",
        None,
        True,
    )
    assert f.intermediate_size == 192 and b.intermediate_size == 128
    n_f = sum(p.numel() for p in build(f).model.layers.parameters())
    n_b = sum(p.numel() for p in build(b).model.layers.parameters())
    assert abs(n_f - n_b) / n_b < 0.02  # ungated 1.5x width keeps the block budget


def test_auto_classes_resolve_without_importing_modeling_at_package_import(repo_root):
    code = (
        "import sys,time; t=time.process_time(); import hf_ext; dt=time.process_time()-t\n"
        "heavy=[m for m in ('hf_ext.models.fog.modeling_fog','torchao','transformers.modeling_utils') "
        "if m in sys.modules]\n"
        # whatever `import hf_ext` wrote comes before these markers (stdout's buffer and stderr keep the order)
        "print('IMPORTED', flush=True); print('IMPORTED', file=sys.stderr, flush=True)\n"
        "from transformers import AutoConfig, AutoModel, AutoModelForCausalLM\n"
        "from hf_ext.models.fog import FogConfig\n"
        "c=FogConfig(vocab_size=64,hidden_size=32,num_hidden_layers=1,num_attention_heads=2,intermediate_size=48)\n"
        "assert type(AutoConfig.for_model('fog', hidden_size=32, num_attention_heads=2)) is FogConfig\n"
        "m=AutoModelForCausalLM.from_config(c); b=AutoModel.from_config(c)\n"
        "print('RESULT', dt, heavy, type(m).__name__, type(b).__name__, file=sys.stderr)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=repo_root, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    line = [ln for ln in res.stderr.splitlines() if ln.startswith("RESULT")][0]
    _, dt, *rest = line.split(" ", 2)
    # the import's cost relative to its dependencies is checked in tests/test_cli.py (an absolute bound is host-bound)
    assert rest[0].startswith("[]") and "FogForCausalLM FogModel" in rest[0]
    # `import hf_ext` in a fresh process is quiet: nothing on stdout or stderr before the markers
    assert res.stdout.startswith("IMPORTED\n"), res.stdout[:2000]
    assert res.stderr.startswith("IMPORTED\n"), res.stderr[:2000]


# --------------------------------------------------------------------------------------------------------- structure
def test_fog_structure_and_megatron_init():
    cfg = fog(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=384)
    model = build(cfg)
    layer = model.model.layers[0]
    assert not hasattr(model.model, "norm")
    assert not hasattr(layer.mlp, "gate_proj") and layer.mlp.up_proj.out_features == 384
    assert torch.allclose(layer.attention_layernorm.weight, torch.full((256,), 0.5))  # 1/sqrt(4)
    assert layer.attention_layernorm.weight.requires_grad
    assert not layer.self_attn.q_norm.weight.requires_grad and not layer.self_attn.k_norm.weight.requires_grad
    std_in = torch.cat([m.self_attn.q_proj.weight.flatten() for m in model.model.layers]).std().item()
    std_out = torch.cat([m.self_attn.o_proj.weight.flatten() for m in model.model.layers]).std().item()
    assert abs(std_in - 0.02) < 0.001 and abs(std_out - 0.02 / math.sqrt(8)) < 0.0005
    act = layer.mlp.act_fn
    alpha_p = torch.nn.functional.softplus(act.alpha_p).item()
    alpha_n = (act.beta + torch.nn.functional.softplus(act.alpha_n)).item()
    assert abs(alpha_p - 0.8) < 1e-5 and abs(alpha_n - 0.8) < 1e-5
    # the embedding output reaching layer 0 is scaled by input_upscale
    seen = {}
    layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0]))
    ids = torch.tensor([[1, 2, 3]])
    model(ids)
    assert torch.allclose(seen["x"], model.model.embed_tokens(ids) * 50.0)


def test_baseline_structure():
    model = build(llama())
    layer = model.model.layers[0]
    assert hasattr(model.model, "norm") and hasattr(layer.mlp, "gate_proj")
    assert not hasattr(layer.self_attn, "q_norm")
    assert torch.all(layer.attention_layernorm.weight == 1)


@pytest.mark.parametrize("qk_norm", ["rms", "dyt"])
def test_attention_logits_bounded_by_tau_head_dim(monkeypatch, qk_norm):
    from hf_ext.models.fog import modeling_fog

    records = []
    original = modeling_fog.eager_attention_forward

    def recording(module, q, k, v, mask, scaling, **kw):
        k_rep = modeling_fog.repeat_kv(k, module.num_key_value_groups)
        records.append((q @ k_rep.transpose(2, 3) * scaling).abs().max().item())
        return original(module, q, k, v, mask, scaling, **kw)

    monkeypatch.setattr(modeling_fog, "eager_attention_forward", recording)
    for cfg in (fog(qk_norm=qk_norm), llama()):
        records.clear()
        model = build(cfg)
        emb = torch.randn(2, 16, 64) * 1e3
        with torch.no_grad():
            for layer in model.model.layers:  # grown q/k weights, as outlier features produce late in training
                layer.self_attn.q_proj.weight.mul_(100.0)
                layer.self_attn.k_proj.weight.mul_(100.0)
            model(inputs_embeds=emb)
        bound = (cfg.softmax_scale or cfg.head_dim**-0.5) * cfg.head_dim
        if cfg.qk_norm != "none":
            assert max(records) <= bound * (1 + 1e-4)
        else:
            assert max(records) > 100 * bound  # the baseline has no such bound


def _xielu_closed_form(x, alpha_p, alpha_n, beta=0.5, eps=-1e-6):
    pos = alpha_p * x * x + beta * x
    neg = alpha_n * torch.expm1(torch.clamp(x, max=eps)) - alpha_n * x + beta * x
    return torch.where(x > 0, pos, neg)


def test_xielu_matches_closed_form_value_and_gradient():
    model = build(fog())
    act = model.model.layers[0].mlp.act_fn.double()
    x = torch.cat([torch.linspace(-6, -1e-3, 200), torch.linspace(1e-3, 6, 200)]).double().requires_grad_()
    y = act(x)
    ap = torch.nn.functional.softplus(act.alpha_p)
    an = act.beta + torch.nn.functional.softplus(act.alpha_n)
    ref = _xielu_closed_form(x, ap, an)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    (g,) = torch.autograd.grad(y.sum(), x, retain_graph=True)
    analytic = torch.where(x > 0, 2 * ap * x + 0.5, an * torch.exp(x) - an + 0.5).detach()
    torch.testing.assert_close(g, analytic, rtol=1e-10, atol=1e-10)
    assert abs(act(torch.tensor([1e-9], dtype=torch.float64)).item()) < 1e-8  # continuous at 0
    # parameter gradients exist and alpha_n >= beta whatever the raw value
    y.sum().backward()
    assert act.alpha_p.grad is not None and act.alpha_n.grad is not None
    with torch.no_grad():
        for raw in (-50.0, -5.0, 0.0, 5.0):
            act.alpha_n.fill_(raw)
            assert (act.beta + torch.nn.functional.softplus(act.alpha_n)).item() >= act.beta.item()


def test_frozen_qk_gains_are_not_optimized(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = build(fog())
    frozen = {id(m.self_attn.q_norm.weight) for m in model.model.layers} | {
        id(m.self_attn.k_norm.weight) for m in model.model.layers
    }
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = Trainer(model=model, args=args)
    trainer.create_optimizer()
    in_groups = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert in_groups and not (in_groups & frozen)
    groups = model.optimizer_grouped_parameters(0.1)
    ids = [{id(p) for p in g["params"]} for g in groups]
    assert not ((ids[0] | ids[1]) & frozen)
    act = model.model.layers[0].mlp.act_fn
    assert id(act.alpha_p) in ids[1] and id(model.model.layers[0].mlp.up_proj.weight) in ids[0]


@pytest.mark.parametrize("make", [fog, llama])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_greedy_generate_with_cache_equals_full_reforward(make, attn):
    model = build(make(), attn)
    prompt = torch.tensor([[5, 17, 33, 2, 90]])
    with torch.no_grad():
        out = model.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
        ids = prompt
        for _ in range(10):
            nxt = model(ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        assert torch.equal(out, ids)
        # incremental logits equal full-forward logits
        full = model(ids, use_cache=False).logits
        first = model(ids[:, :6], use_cache=True)
        step = model(ids[:, 6:7], cache=first.cache, use_cache=True)
        torch.testing.assert_close(step.logits[:, -1], full[:, 6], rtol=1e-4, atol=1e-4)


def test_gradient_checkpointing_gives_same_gradients():
    cfg = fog()
    ids = torch.randint(0, 128, (2, 12))
    grads = []
    for ckpt in (False, True):
        model = build(cfg).train()
        if ckpt:
            model.activation_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append(model.model.layers[0].self_attn.q_proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_save_load_round_trip_registered_path(tmp_path):
    from transformers import AutoModelForCausalLM

    model = build(fog(tie_word_embeddings=True))
    ids = torch.randint(0, 128, (2, 9))
    model.save_pretrained(tmp_path / "m")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "m", attn_implementation="eager").eval()
    assert type(again).__name__ == "FogForCausalLM"
    for (n, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), n
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_save_load_round_trip_trust_remote_code_without_hf_ext(
    tmp_path, monkeypatch, remote_code_logits_without_hf_ext
):
    from hf_ext.models.fog import FogForCausalLM

    model = build(fog(qk_norm="dyt"))
    # the registration is class state: undone after the test, so that later saves in this process (any test module
    # the same pytest worker runs next) write no remote code
    for cls in (FogConfig, FogForCausalLM):
        monkeypatch.setattr(cls, "_auto_class", cls.__dict__.get("_auto_class"), raising=False)
    FogConfig.register_for_auto_class()
    FogForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    folder = tmp_path / "remote"
    model.save_pretrained(folder)
    assert (folder / "modeling_fog.py").is_file() and (folder / "configuration_fog.py").is_file()
    assert "auto_map" in json.loads((folder / "config.json").read_text())
    ids = torch.randint(0, 128, (1, 7))
    with torch.no_grad():
        expected = model(ids).logits
    _, module = remote_code_logits_without_hf_ext(folder, ids, expected, attn_implementation="eager")
    assert module.startswith("transformers_modules"), module


# ------------------------------------------------------------------------------------------ authors' checkpoint naming
def _to_authors_naming(state, cfg):
    """Rewrite our state dict in the naming of the authors' transformers port (FOGForCausalLM)."""
    out = {}
    for k, v in state.items():
        if k.endswith("act_fn.beta") or k.endswith("act_fn.eps"):
            continue  # their xIELU has no such buffers
        k = k.replace(".attention_layerscale.", ".self_attn.attn_layerscale.")
        k = k.replace(".feedforward_layerscale.", ".mlp.mlp_layerscale.")
        out[k] = v.clone()
    if not cfg.final_layernorm:
        out["model.norm.weight"] = torch.ones(cfg.hidden_size)  # always present in their port, unused
    return out


@pytest.mark.parametrize(
    "raw_extra",
    [
        dict(pre_norm=False, post_norm=True, layerscale=True, hidden_act="xielu", qk_norm=True, qk_type="rms"),
        dict(pre_norm=True, post_norm=False, layerscale=True, hidden_act="silu", qk_norm=False, final_layernorm=True),
    ],
)
def test_authors_checkpoint_key_mapping(tmp_path, raw_extra):
    from safetensors.torch import save_file

    from hf_ext.models.fog import FogForCausalLM, convert_authors_config

    raw = {
        "model_type": "fog", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 500000.0, "softmax_scale": 0.125,
        "input_upscale": 50.0, "freeze_qk": True, "tie_word_embeddings": False, "final_layernorm": False,
        **raw_extra,
    }  # fmt: skip
    cfg = convert_authors_config(raw)
    assert cfg.hidden_act == ("xielu" if raw["hidden_act"] == "xielu" else "swiglu")
    assert cfg.qk_norm == ("rms" if raw["qk_norm"] else "none") and cfg.input_upscale == 50.0
    source = build(cfg)
    with torch.no_grad():  # distinguishable values everywhere
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    if cfg.layerscale and not cfg.post_norm:
        assert hasattr(source.model.layers[0], "attention_layerscale")
    folder = tmp_path / "authors"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(raw))
    save_file({k: v.contiguous() for k, v in _to_authors_naming(source.state_dict(), cfg).items()},
              str(folder / "model.safetensors"))  # fmt: skip
    loaded = FogForCausalLM.from_authors_checkpoint(str(folder), attn_implementation="eager")
    for (n, a), (_, b) in zip(source.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="missing"):
        from hf_ext.models.fog import load_authors_state_dict

        bad = _to_authors_naming(source.state_dict(), cfg)
        bad.pop("model.layers.0.self_attn.q_proj.weight")
        load_authors_state_dict(build(cfg), bad)
