"""Audit pass 40 review (rv49): `hf_ext.recipes._common.whole_trained_model`, the main process's plain copy of a model
trained under FSDP / DeepSpeed (layer_parallel --finetune, metadata_pretrain)."""

import types

import pytest
import torch


def _fake_sharded_trainer(model):
    """What `whole_trained_model` reads of a Trainer under FSDP on the main process: the gathered state dict (here the
    model's own), the unwrapped model and the device."""
    accelerator = types.SimpleNamespace(get_state_dict=lambda m: m.state_dict(), unwrap_model=lambda m: m)
    return types.SimpleNamespace(
        model=model,
        accelerator=accelerator,
        is_fsdp_enabled=True,
        is_deepspeed_enabled=False,
        is_world_process_zero=lambda: True,
        args=types.SimpleNamespace(device=torch.device("cpu")),
    )


@pytest.mark.parametrize("mode", ["sublayer", "block"])
def test_whole_trained_model_keeps_a_bfloat16_layer_parallel_model_in_bfloat16(tmp_path, mode):
    """A bf16 checkpoint (--model_name_or_path) converted with `convert_to_layer_parallel` has `config.dtype` None, so
    the copy built with `from_config(config)` was float32: under --fsdp the fine-tuned model was evaluated and saved
    (layer_parallel_model/) in float32, twice the size, while the same run in one process keeps and saves bfloat16.
    The copy has the trained model's dtype and gives its logits exactly."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    import hf_ext  # noqa: F401  (registers the architectures)
    from hf_ext.models.layer_parallel import convert_to_layer_parallel
    from hf_ext.recipes._common import whole_trained_model

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )  # fmt: skip
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(tmp_path)
    source = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert source.dtype == torch.bfloat16
    lp = convert_to_layer_parallel(source, 2, 4, mode=mode).eval()
    whole = whole_trained_model(_fake_sharded_trainer(lp))
    assert whole is not lp
    assert {p.dtype for p in whole.parameters()} == {torch.bfloat16}
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(whole.eval()(x).logits, lp(x).logits)


def test_whole_trained_model_keeps_a_float32_model_float32():
    """The copy of a float32 model (config.dtype None, the recipes' fresh models) stays float32 and exact."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.recipes._common import whole_trained_model

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    whole = whole_trained_model(_fake_sharded_trainer(model))
    assert {p.dtype for p in whole.parameters()} == {torch.float32}
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(whole.eval()(x).logits, model(x).logits)


class _Built(Exception):
    pass


def test_warmup_warns_that_the_users_file_gets_the_corpus_tokenizer(monkeypatch, caplog, tmp_path):
    """README: "Without --tokenizer_name ... your --train_file ... are tokenized with the BPE built on the embedded
    corpus ...; the recipes say so in a warning", beside the list of recipes that take a --train_file (warmup among
    them). warmup tokenized its --train_file with that BPE silently; it now warns too, and says it has no tokenizer
    flag (none to pass). The run stops at the tokenizer build."""
    import logging

    import hf_ext.data as data_module
    from hf_ext.recipes.warmup import main

    def stop(*args, **kwargs):
        raise _Built

    monkeypatch.setattr(data_module, "build_tokenizer", stop)
    path = tmp_path / "mine.txt"
    path.write_text("Ein Dokument auf Deutsch.\n\nNoch eines, mit Umlauten: äöü.\n", encoding="utf-8")
    common = ["--use_cpu", "true", "--report_to", "none", "--max_steps", "1", "--arms", "adamw_warmup"]
    for argv, warned in (([*common, "--train_file", str(path)], True), (common, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING), pytest.raises(_Built):
            main([*argv, "--output_dir", str(tmp_path / ("a" if warned else "b"))])
        assert (f"--train_file {str(path)!r} will be tokenized with the byte-level BPE" in caplog.text) is warned
        assert ("This recipe has no tokenizer flag" in caplog.text) is warned


@pytest.mark.parametrize("scaling", ["current", "delayed"])
def test_fp8_linear_keeps_a_float64_output_under_autocast_as_nn_linear_does(scaling):
    """fg49 (b098b20) gave the emulated Fp8Linear's output the autocast dtype "as nn.Linear's"; but autocast leaves
    float64 alone (nn.Linear on float64 under `torch.autocast("cpu", bfloat16)` returns float64), and Fp8Linear
    returned bfloat16 there: a float64 model's outputs rounded to 8 significant bits. float64 now stays float64 and
    equals the output without autocast; a float32 input still gets the autocast dtype."""
    from hf_ext.fp8.emulation import Fp8Linear

    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 16).double()
    fp8 = Fp8Linear.from_linear(linear, scaling=scaling)
    x = torch.randn(4, 32, dtype=torch.float64)
    with torch.no_grad():
        plain = fp8(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference = linear(x)
            out = fp8(x)
    assert reference.dtype == torch.float64
    assert out.dtype == torch.float64
    if scaling == "current":  # the same scales with and without autocast
        assert torch.equal(out, plain)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert Fp8Linear.from_linear(torch.nn.Linear(32, 16), scaling=scaling)(x.float()).dtype == torch.bfloat16
