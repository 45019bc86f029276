"""Fix of audit rv17 #1: `GrokDecoderConfig` accepted numpy integer sizes but kept them as numpy ints, so
`save_pretrained` (and every Trainer checkpoint) failed with "Object of type int64 is not JSON serializable". The
same held for its switches (a numpy bool; the string "false" was kept and counted as True) and for the numbers and
switches of `NeuralGrokConfig` (`to_json_string()`, which e.g. the TensorBoard callback logs, failed)."""

import json

import numpy as np
import pytest
import torch

from hf_ext.neuralgrok import NeuralGrokConfig
from hf_ext.neuralgrok.modeling import GrokDecoderConfig, GrokDecoderForCausalLM

_SIZES = dict(vocab_size=13, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=8)


def test_numpy_sizes_are_stored_as_ints_and_the_model_round_trips(tmp_path):
    config = GrokDecoderConfig(
        **{k: np.int64(v) for k, v in _SIZES.items()},
        mlp_ratio=np.int32(2),
        overwrite_residual_with_norm=np.bool_(False),
        tie_word_embeddings=np.bool_(True),
    )
    for name in (*_SIZES, "mlp_ratio"):
        assert type(getattr(config, name)) is int, name
    assert config.overwrite_residual_with_norm is False and config.tie_word_embeddings is True
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(config).eval()
    model.save_pretrained(tmp_path)  # used to fail: int64 is not JSON serializable
    saved = json.loads((tmp_path / "config.json").read_text())
    assert {k: saved[k] for k in _SIZES} == _SIZES and saved["mlp_ratio"] == 2
    reloaded = GrokDecoderForCausalLM.from_pretrained(tmp_path).eval()
    for name in (*_SIZES, "mlp_ratio", "overwrite_residual_with_norm", "tie_word_embeddings"):
        assert getattr(reloaded.config, name) == getattr(config, name), name
    assert reloaded.head.weight is reloaded.token_embeddings.weight  # tied, as saved
    assert not reloaded.layers[0].overwrite_residual_with_norm
    ids = torch.arange(8).reshape(1, 8) % 13
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["overwrite_residual_with_norm", "tie_word_embeddings"])
@pytest.mark.parametrize("value", ["false", 0, None])
def test_switches_must_be_bools(name, value):
    with pytest.raises(ValueError, match=rf"GrokDecoderConfig.{name}={value!r} must be a bool"):
        GrokDecoderConfig(**_SIZES, **{name: value})


def test_neuralgrok_config_stores_numpy_values_as_python_types(tmp_path):
    args = NeuralGrokConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        report_to="none",
        outer_every=np.int64(2),
        amplifier_hidden_dims=[np.int64(16), np.int32(8)],
        amplifier_c=np.float32(2.0),
        amplifier_clip_norm=np.float32(0.5),
        meta_learning_rate=np.float32(1e-3),
        meta_weight_decay=np.int64(0),
        virtual_lr=np.float32(0.25),
        outer_batch_size=np.int64(4),
        outer_max_samples=np.int64(8),
        grokfast_alpha=np.float32(0.5),
        grokfast_lamb=np.float32(3.0),
        grokfast_window=np.int64(5),
        grokfast_warmup=np.bool_(False),
        track_entropy=np.bool_(True),
    )
    expected = dict(
        outer_every=(int, 2),
        amplifier_c=(float, 2.0),
        amplifier_clip_norm=(float, 0.5),
        meta_weight_decay=(float, 0.0),
        virtual_lr=(float, 0.25),
        outer_batch_size=(int, 4),
        outer_max_samples=(int, 8),
        grokfast_alpha=(float, 0.5),
        grokfast_lamb=(float, 3.0),
        grokfast_window=(int, 5),
        grokfast_warmup=(bool, False),
        track_entropy=(bool, True),
    )
    for name, (kind, value) in expected.items():
        assert type(getattr(args, name)) is kind and getattr(args, name) == value, name
    assert args.amplifier_hidden_dims == [16, 8] and all(type(h) is int for h in args.amplifier_hidden_dims)
    assert args.meta_learning_rate == pytest.approx(1e-3)
    logged = json.loads(args.to_json_string())  # used to fail: float32 is not JSON serializable
    assert logged["outer_every"] == 2 and logged["grokfast_warmup"] is False
