"""transformers' own config fields that `LlamaConfig` (a strict dataclass) type-checks are checked by `FogConfig` too:
a hand-edited config.json with `"tie_word_embeddings": "False"` used to tie the LM head silently."""

import json

import pytest

from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


@pytest.mark.parametrize(
    "field, value",
    [
        ("tie_word_embeddings", "False"),
        ("tie_word_embeddings", None),
        ("use_cache", "no"),
        ("use_cache", 1),
        ("eos_token_id", "2"),
        ("eos_token_id", [1, "2"]),
        ("eos_token_id", -1),
        ("bos_token_id", True),
        ("bos_token_id", [1]),
        ("rope_parameters", [1, 2]),
    ],
)
def test_wrong_typed_base_fields_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=f"FogConfig.{field} must be"):
        FogConfig.fog(**TINY, **{field: value})


def test_good_base_fields_still_build():
    config = FogConfig.fog(**TINY, tie_word_embeddings=True, use_cache=False, eos_token_id=[1, 2], bos_token_id=0)
    model = FogForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert FogConfig.fog(**TINY, rope_parameters={"rope_type": "default", "rope_theta": 500.0}).rope_parameters[
        "rope_theta"
    ] == 500.0


def test_a_hand_edited_string_in_config_json_is_refused_on_load(tmp_path):
    FogForCausalLM(FogConfig.fog(**TINY)).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    data = json.loads(path.read_text())
    data["tie_word_embeddings"] = "False"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="FogConfig.tie_word_embeddings must be True or False"):
        FogForCausalLM.from_pretrained(tmp_path)
