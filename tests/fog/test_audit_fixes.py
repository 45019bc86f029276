"""Fixes of the fog2 audit (FOG side): config fields refused at config time, Smooth-SwiGLU with biases equal to SwiGLU,
`from_authors_checkpoint(dtype=...)`, the pretrain recipe's config-override checks and MLP width."""

import json
import os

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)


# --------------------------------------------------------------------------------------------- F3: FogConfig fields
@pytest.mark.parametrize(
    "field, value",
    [
        ("xielu_eps", float("nan")),  # non-finite logits
        ("xielu_beta", float("-inf")),
        ("xielu_alpha_p_init", float("inf")),
        ("xielu_alpha_p_init", True),
        ("dyt_alpha_init", float("nan")),
        ("post_norm", None),
        ("freeze_qk_gain", "no"),
        ("layerscale", "yes"),
        ("final_layernorm", 1.5),
        ("mlp_bias", 1),
    ],
)
def test_bad_fog_fields_are_refused_at_config_time_by_name(field, value):
    with pytest.raises(ValueError, match=f"FogConfig.{field} must be"):
        FogConfig.fog(**TINY, **{field: value})


def test_pre_norm_given_as_a_string_is_named_as_such():
    # used to say "pre_norm=True and post_norm=True cannot be combined"
    with pytest.raises(ValueError, match=r"FogConfig.pre_norm must be True or False, got 'False'"):
        FogConfig.fog(**TINY, pre_norm="False")


def test_a_large_xielu_alpha_n_init_builds():
    # used to be a bare OverflowError (math.expm1) when the model was built
    model = FogForCausalLM(FogConfig.fog(**TINY, xielu_alpha_n_init=1000.0))
    act = model.model.layers[0].mlp.act_fn
    alpha_n = torch.nn.functional.softplus(act.alpha_n.float()) + act.beta
    assert alpha_n.item() == pytest.approx(1000.0, rel=1e-6)
    assert torch.isfinite(model(torch.tensor([[1, 2, 3]])).logits).all()


@pytest.mark.parametrize(
    "rope, match",
    [
        ({"rope_type": "llama3", "rope_theta": 5e5}, "rope_parameters.*factor"),  # was a KeyError at build
        ({"rope_type": "no_such_type", "rope_theta": 5e5}, r"rope_parameters\['rope_type'\]='no_such_type'"),
    ],
)
def test_rope_parameters_are_validated_at_config_time(rope, match):
    with pytest.raises(ValueError, match=match):
        FogConfig.fog(**TINY, rope_parameters=rope)


def test_valid_rope_scaling_and_saved_configs_still_load(tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}  # fmt: skip
    model = FogForCausalLM(FogConfig.fog(**TINY, rope_parameters=rope))
    model.save_pretrained(tmp_path)
    again = FogForCausalLM.from_pretrained(tmp_path)
    assert again.config.rope_parameters["rope_type"] == "llama3"
    baseline = FogConfig.llama_baseline(**TINY)
    baseline.save_pretrained(tmp_path / "baseline")
    assert FogConfig.from_pretrained(tmp_path / "baseline").pre_norm is True


# ---------------------------------------------------------------------------------- F7: Smooth-SwiGLU with biases
@pytest.mark.parametrize("act", ["smooth_swiglu", "smooth_swiglu_product"])
def test_smooth_swiglu_with_biases_equals_swiglu_in_float64(act):
    from hf_ext.models.fog.modeling_fog import FogMLP

    torch.manual_seed(0)
    ref = FogMLP(FogConfig.fog(**TINY, hidden_act="swiglu", mlp_bias=True)).double()
    smooth = FogMLP(FogConfig.fog(**TINY, hidden_act=act, mlp_bias=True)).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
    smooth.load_state_dict(ref.state_dict())
    x = torch.randn(4, 32, dtype=torch.float64)
    # the scale s = max|gate| is far from 1 here: a bias inside the rescaled GEMM was off by bias * (s - 1) (~1.9)
    torch.testing.assert_close(smooth(x), ref(x), rtol=1e-12, atol=1e-12)
    assert [n for n, _ in smooth.named_parameters()] == [n for n, _ in ref.named_parameters()]  # bias kept in place


def test_smooth_swiglu_bias_after_the_scale_in_an_fp8_model_trains_the_bias():
    from hf_ext.fp8 import convert

    torch.manual_seed(0)
    model = FogForCausalLM(FogConfig.fog(**TINY, hidden_act="smooth_swiglu", mlp_bias=True))
    convert(model, "emulated")
    down = model.model.layers[0].mlp.down_proj
    ids = torch.randint(0, 64, (2, 8))
    model(ids, labels=ids).loss.backward()
    assert down.bias is not None and down.bias.grad is not None and down.bias.grad.abs().sum() > 0
    assert "model.layers.0.mlp.down_proj.bias" in model.state_dict()


# ------------------------------------------------------------------------------- F8: from_authors_checkpoint dtype
@pytest.fixture
def authors_folder(tmp_path):
    from safetensors.torch import save_file

    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48)
    model = FogForCausalLM(FogConfig.fog(**base, final_layernorm=False))
    state = {
        k: v.to(torch.bfloat16).contiguous()
        for k, v in model.state_dict().items()
        if not k.endswith(("act_fn.beta", "act_fn.eps"))
    }
    state["model.norm.weight"] = torch.ones(32, dtype=torch.bfloat16)
    raw = {**base, "model_type": "fog", "torch_dtype": "bfloat16", "softmax_scale": 0.125, "final_layernorm": False,
           "input_upscale": 50.0}  # fmt: skip
    save_file(state, os.path.join(tmp_path, "model.safetensors"))
    with open(os.path.join(tmp_path, "config.json"), "w") as fh:
        json.dump(raw, fh)
    return str(tmp_path), state


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, torch.float32),
        ({"dtype": torch.bfloat16}, torch.bfloat16),  # was float32 (dtype became a config field)
        ({"dtype": "float16"}, torch.float16),
        ({"dtype": "auto"}, torch.bfloat16),  # the checkpoint's torch_dtype
        ({"torch_dtype": "bfloat16"}, torch.bfloat16),
    ],
)
def test_from_authors_checkpoint_honours_dtype(authors_folder, kwargs, expected):
    path, state = authors_folder
    model = FogForCausalLM.from_authors_checkpoint(path, **kwargs)
    assert {p.dtype for p in model.parameters()} == {expected}
    assert model.config.dtype == expected
    w = model.model.layers[0].mlp.up_proj.weight
    torch.testing.assert_close(w.float(), state["model.layers.0.mlp.up_proj.weight"].float())
    assert model(torch.tensor([[1, 2, 3]])).logits.dtype == expected


def test_from_authors_checkpoint_refuses_a_non_float_dtype(authors_folder):
    with pytest.raises(ValueError, match="dtype"):
        FogForCausalLM.from_authors_checkpoint(authors_folder[0], dtype="int8")


# ------------------------------------------------------------------------ F5: recipe config overrides, MLP width
def _recipe_args(*flags):
    from hf_ext.recipes import pretrain
    from hf_ext.recipes._common import parse_recipe_args

    return parse_recipe_args(
        (pretrain.ModelArguments, pretrain.DataArguments, pretrain.PretrainTrainingArguments),
        ["--output_dir", "unused", "--report_to", "none", *flags],
    )


@pytest.mark.parametrize(
    "override, field, expected",
    [
        ("xielu_eps=-1e-6", "xielu_eps", -1e-6),  # FogConfig's own default: was "must not be negative"
        ("xielu_eps=-1e-5", "xielu_eps", -1e-5),
        ("softmax_scale=null", "softmax_scale", None),  # was "has the wrong type"
        ("input_upscale=null", "input_upscale", None),
        ("intermediate_size=64", "intermediate_size", 64),  # the real width: was silently 96 (read as SwiGLU)
    ],
)
def test_recipe_config_overrides_take_valid_values_as_given(override, field, expected):
    from hf_ext.recipes import pretrain

    model_args, data_args, _ = _recipe_args("--config_overrides", override, "--fp8_backend", "none")
    pretrain.check_config_overrides(model_args)
    config = pretrain.fresh_config(model_args, 256, data_args.block_size)
    assert getattr(config, field) == expected


def test_recipe_config_overrides_still_refuse_bad_values():
    from hf_ext.recipes import pretrain

    for override, match in (
        ("hidden_size=-8", "must not be negative"),
        ("softmax_scale=true", "wrong type"),
        ("hidden_act=null", "wrong type"),
    ):
        model_args, _, _ = _recipe_args("--config_overrides", override)
        with pytest.raises(ValueError, match=match):
            pretrain.check_config_overrides(model_args)
    model_args, _, _ = _recipe_args("--config_overrides", "intermediate_size=64", "--intermediate_size", "128")
    with pytest.raises(ValueError, match="both set the MLP width"):
        pretrain.check_config_overrides(model_args)


# ------------------------------------------------------------------- F6: recipe FP8 checks before data preparation
@pytest.mark.parametrize(
    "flags, match",
    [
        (["--model_type", "gpt2", "--hidden_size", "32", "--num_attention_heads", "2"], "--fp8_backend none"),
        (["--hidden_size", "24", "--num_attention_heads", "2"], "divisible by 16.*--hidden_size"),
        (
            ["--fp8_backend", "emulated", "--config_overrides", "intermediate_size=40"],
            "divisible by 16.*emulated|emulated.*divisible by 16",
        ),
    ],
)
def test_recipe_fp8_problems_are_named_by_flag_before_the_tokenizer_and_data(tmp_path, monkeypatch, flags, match):
    import hf_ext.data
    from hf_ext.recipes import pretrain

    def no_data(*a, **k):
        raise AssertionError("the tokenizer / data were prepared before the FP8 check")

    monkeypatch.setattr(hf_ext.data, "build_tokenizer", no_data)
    monkeypatch.setattr(hf_ext.data, "load_text_datasets", no_data)
    with pytest.raises(ValueError, match=match):
        pretrain.main(["--output_dir", str(tmp_path), "--num_hidden_layers", "1", "--max_steps", "2",
                       "--report_to", "none", *flags])  # fmt: skip


def test_recipe_fp8_check_passes_the_defaults_and_fp8_off(tmp_path):
    from hf_ext.recipes import pretrain

    for flags in ([], ["--model_type", "gpt2", "--fp8_backend", "none", "--hidden_size", "32",
                       "--num_attention_heads", "2"]):  # fmt: skip
        model_args, data_args, training_args = _recipe_args(*flags)
        pretrain.check_fresh_model_fp8(model_args, training_args, data_args.block_size)


# --------------------------------------------------------------------- WSD: warmup + cooldown longer than the run
def test_wsd_warmup_plus_cooldown_longer_than_the_run_is_warned(tmp_path, caplog):
    from datasets import Dataset
    from transformers import TrainingArguments

    from hf_ext.fp8 import Fp8Trainer

    model = FogForCausalLM(FogConfig.fog(**TINY))
    ds = Dataset.from_dict({"input_ids": [[1, 2, 3, 4]] * 8, "labels": [[1, 2, 3, 4]] * 8})
    for warmup, decay, warned in ((5, 0.8, True), (2, 0.2, False)):
        args = TrainingArguments(
            str(tmp_path), max_steps=10, warmup_steps=warmup, lr_scheduler_type="warmup_stable_decay",
            lr_scheduler_kwargs={"num_decay_steps": decay, "decay_type": "1-sqrt"}, report_to="none", use_cpu=True,
        )  # fmt: skip
        caplog.clear()
        with caplog.at_level("WARNING"):
            Fp8Trainer(model=model, args=args, train_dataset=ds).create_optimizer_and_scheduler(10)
        hit = [r for r in caplog.records if "warmup (5 steps) + cooldown (8 steps) exceed" in r.getMessage()]
        assert bool(hit) == warned
