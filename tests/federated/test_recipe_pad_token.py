"""The federated recipe's tiny fresh model with a loaded tokenizer that has no pad token (`--tokenizer_name`, e.g.
GPT-2's) gets a pad token of its own, as pretrain's does. It padded with EOS: the config took
`pad_token_id = eos_token_id`, so transformers' Llama built its input embedding with `padding_idx` = EOS, a row zeroed
at init that gets no gradient from the inputs (the pretrain stage), tied to the output (EOS's logit 0 at init)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

import hf_ext.recipes.federated as recipe
from hf_ext.data import build_tokenizer

from .conftest import tiny_recipe_args


def test_tiny_fresh_model_gets_its_own_pad_token_not_eos(tmp_path, monkeypatch):
    base = build_tokenizer(300)
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, bos_token=base.bos_token,
                                  eos_token=base.eos_token)  # fmt: skip
    assert tok.pad_token is None
    tok.save_pretrained(tmp_path / "tok")
    built = []
    real = recipe.build_tiny_model

    def record(model_args, tokenizer):
        model = real(model_args, tokenizer)
        built.append((model, tokenizer))
        return model

    monkeypatch.setattr(recipe, "build_tiny_model", record)
    argv = tiny_recipe_args(vocab_size=None, pretrain_steps=1)  # the pretrain stage trains the embeddings
    recipe.main([*argv, "--configs", "lora", "--tokenizer_name", str(tmp_path / "tok"), "--output_dir",
                 str(tmp_path / "out")])  # fmt: skip
    assert built
    eos = tok.eos_token_id
    for model, tokenizer in built:
        assert tokenizer.pad_token == "<|pad|>" and tokenizer.pad_token_id != eos
        assert model.config.pad_token_id == tokenizer.pad_token_id
        assert model.get_input_embeddings().padding_idx != eos
        assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    base_model = built[0][0]
    assert torch.linalg.vector_norm(base_model.get_input_embeddings().weight[eos]).item() > 0  # not the zero row
