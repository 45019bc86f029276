"""A fresh model trained with a loaded tokenizer that has no pad token gets a pad token of its own, not EOS.

pretrain and metadata_pretrain set `pad_token = eos_token` for such a tokenizer (GPT-2's, Llama's), and the fresh config
took `pad_token_id = eos_token_id`. transformers' decoders build `nn.Embedding(padding_idx=pad_token_id)`: that row is
zeroed at init and never gets a gradient. With untied embeddings (FOG's reference setting,
`--config_overrides tie_word_embeddings=false`) the EOS that ends every packed document entered the model as a zero
vector for the whole run."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from hf_ext.data import build_tokenizer
from hf_ext.recipes._common import set_missing_pad_token
from hf_ext.recipes.pretrain import main

from .test_pretrain import TINY


def _tokenizer(pad: str | None = None):
    base = build_tokenizer(512)
    return PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, bos_token=base.bos_token, eos_token=base.eos_token, pad_token=pad
    )


def test_a_fresh_model_gets_its_own_pad_token_and_a_loaded_one_pads_with_eos():
    fresh, loaded, own = _tokenizer(), _tokenizer(), _tokenizer("<|pad|>")
    n = len(fresh)
    assert fresh.pad_token is None
    set_missing_pad_token(fresh, fresh_model=True)
    assert fresh.pad_token == "<|pad|>" and fresh.pad_token_id not in (fresh.bos_token_id, fresh.eos_token_id)
    assert fresh.pad_token_id < len(fresh) == n + (fresh.pad_token_id == n)
    set_missing_pad_token(loaded, fresh_model=False)  # a loaded model keeps its vocabulary
    assert loaded.pad_token_id == loaded.eos_token_id and len(loaded) == n
    before = own.pad_token_id
    set_missing_pad_token(own, fresh_model=True)  # a tokenizer's own pad token is kept
    assert own.pad_token_id == before


def _run(tmp_path, folder, out, steps, *extra):
    args = TINY + ["--tokenizer_name", str(folder), "--config_overrides", "tie_word_embeddings=false"]
    return main(
        args
        + [
            "--max_steps",
            str(steps),
            "--save_strategy",
            "steps",
            "--save_steps",
            "2",
            "--max_new_tokens",
            "2",
            *extra,
            "--output_dir",
            str(out),
        ]
    )


def test_pretrain_with_a_tokenizer_without_pad_trains_the_eos_input_embedding(tmp_path):
    folder = tmp_path / "tok"
    tok = _tokenizer()
    tok.save_pretrained(folder)
    out = tmp_path / "run"
    _run(tmp_path, folder, out, 3)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.tie_word_embeddings is False
    eos = tok.eos_token_id
    # the EOS row trained like any other: not the frozen zero row of a padding_idx (0.0 before)
    assert torch.linalg.vector_norm(model.get_input_embeddings().weight[eos]).item() > 0.1
    assert model.get_input_embeddings().padding_idx != eos
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.pad_token == "<|pad|>" and model.config.pad_token_id == saved.pad_token_id
    assert model.config.vocab_size == len(saved)


def test_a_checkpoint_with_fewer_embeddings_than_the_tokenizer_is_refused_by_name(tmp_path):
    """A run started before the change (pad = EOS, one row fewer) resumed now: its tokenizer's <|pad|> id is outside the
    checkpoint's model; refused before training, naming the cause."""
    folder = tmp_path / "tok"
    _tokenizer().save_pretrained(folder)
    out = tmp_path / "run"
    _run(tmp_path, folder, out, 4)
    config = out / "checkpoint-2" / "config.json"
    data = json.loads(config.read_text())
    data["vocab_size"] -= 1  # what the older release saved
    config.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="1 token embeddings|token embeddings and the run's tokenizer"):
        _run(tmp_path, folder, out, 4, "--resume_from_checkpoint", str(out / "checkpoint-2"))
