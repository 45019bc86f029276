"""The GRAPE recipe's fresh model with a loaded tokenizer that has no pad token (`--tokenizer_name`, e.g. GPT-2's) gets
a pad token of its own, as pretrain and metadata_pretrain's do. It padded with EOS: the fresh config took
`pad_token_id = eos_token_id`, so transformers' decoder built its input embedding with `padding_idx` = EOS, a row
zeroed at init that gets no gradient from the inputs (the recipe's embeddings are tied: EOS, which ends every packed
document, learned only as an output). A run started that way resumed now is refused by name."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from hf_ext.data import build_tokenizer
from hf_ext.recipes.grape import main

DOMAINS = ["text", "numeric", "networking", "filesystem"]
TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--block_size", "32",
    "--per_device_train_batch_size", "4", "--reweight_method", "uniform", "--source_domains", ",".join(DOMAINS),
    "--disable_tqdm", "true", "--use_cpu", "true", "--report_to", "none", "--plot_file", "",
    "--save_strategy", "steps", "--save_steps", "1",
]  # fmt: skip


@pytest.fixture
def padless_tokenizer(tmp_path):
    base = build_tokenizer(512)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=base.backend_tokenizer, bos_token=base.bos_token, eos_token=base.eos_token
    )
    assert tok.pad_token is None
    folder = tmp_path / "tok"
    tok.save_pretrained(folder)
    return folder, tok


def _run(folder, out, steps, *extra):
    main([*TINY, "--tokenizer_name", str(folder), "--max_steps", str(steps), *extra, "--output_dir", str(out)])


def test_fresh_model_gets_its_own_pad_token_not_eos(tmp_path, padless_tokenizer):
    folder, tok = padless_tokenizer
    out = tmp_path / "run"
    _run(folder, out, 1)
    model = AutoModelForCausalLM.from_pretrained(out)
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.pad_token == "<|pad|>" and saved.pad_token_id != tok.eos_token_id
    assert model.config.pad_token_id == saved.pad_token_id != model.config.eos_token_id
    assert model.get_input_embeddings().padding_idx != tok.eos_token_id
    assert model.config.vocab_size == len(saved)


def test_a_checkpoint_of_a_run_that_padded_with_eos_is_refused_by_name(tmp_path, padless_tokenizer):
    folder, _ = padless_tokenizer
    out = tmp_path / "run"
    _run(folder, out, 2)
    config = out / "checkpoint-1" / "config.json"
    data = json.loads(config.read_text())
    data["vocab_size"] -= 1  # what the older release saved: no row for <|pad|>
    config.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="token embeddings and the run's tokenizer"):
        _run(folder, out, 2, "--resume_from_checkpoint", str(out / "checkpoint-1"))
