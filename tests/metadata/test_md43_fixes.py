"""Audit pass md43.

1. `generate_with_metadata_guidance`: clear errors for a `generation_config` that is no `GenerationConfig` and a
   non-int `num_beams` (both failed with a raw error from the function's own code).
2. Packing with `document_attention` on a model whose causal mask ignores the restarting `position_ids` (OPT, MPT,
   Bloom, BioGPT, XGLM in transformers 5) trained every document attending to its predecessors, silently;
   `MetadataCollator.check_model` (and so `MetadataTrainer.train`) now refuses it.
"""

import pytest
from transformers import GenerationConfig

from hf_ext.metadata import generate_with_metadata_guidance

from .conftest import tiny_llama


@pytest.fixture(scope="module")
def model(ctx_tokenizer):
    return tiny_llama(len(ctx_tokenizer), hidden=32).eval()


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_a_dict_generation_config_is_refused_by_name(model, ctx_tokenizer, scale):
    """A dict failed with "AttributeError: 'dict' object has no attribute 'pad_token_id'" (our settings are set on
    a copy of the config)."""
    with pytest.raises(TypeError, match=r"generation_config must be a transformers GenerationConfig, got a dict"):
        generate_with_metadata_guidance(
            model,
            ctx_tokenizer,
            ["a", "b c d"],
            "x.org",
            guidance_scale=scale,
            generation_config={"max_new_tokens": 2},
        )


def test_a_generation_config_object_still_works(model, ctx_tokenizer):
    texts = generate_with_metadata_guidance(
        model, ctx_tokenizer, ["a", "b c d"], "x.org", guidance_scale=2.0,
        generation_config=GenerationConfig(max_new_tokens=2, do_sample=False),
    )  # fmt: skip
    assert len(texts) == 2


@pytest.mark.parametrize("beams", ["2", 2.5])
def test_a_num_beams_that_is_no_int_is_refused_by_name(model, ctx_tokenizer, beams):
    """`num_beams="2"` failed with "TypeError: '>' not supported between instances of 'str' and 'int'"."""
    with pytest.raises(ValueError, match=r"num_beams must be a positive int, got"):
        generate_with_metadata_guidance(
            model, ctx_tokenizer, "a", "x.org", guidance_scale=2.0, num_beams=beams, max_new_tokens=2
        )


def test_int_num_beams_keep_their_refusal_and_one_beam_generates(model, ctx_tokenizer):
    with pytest.raises(ValueError, match=r"does not work with num_beams > 1"):
        generate_with_metadata_guidance(model, ctx_tokenizer, "a", "x.org", guidance_scale=2.0, num_beams=2)
    assert len(generate_with_metadata_guidance(
        model, ctx_tokenizer, "a", "x.org", guidance_scale=2.0, num_beams=1, max_new_tokens=2, do_sample=False
    )) == 1  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Packing with document_attention on a model whose mask ignores position_ids (OPT, MPT, Bloom, BioGPT)

PACK_ROWS = [
    {"text": "short doc one here", "url": "https://a.org/x"},
    {"text": "another short doc", "url": "https://b.org/y"},
    {"text": "a third document that is long enough to run over the end of the first row", "url": "https://c.org/z"},
]


def tiny_opt(vocab_size: int):
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=vocab_size, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=32, max_position_embeddings=128,
    )  # fmt: skip
    return OPTForCausalLM(config)


def test_check_model_refuses_a_model_whose_mask_ignores_restarting_positions(ctx_tokenizer):
    """OPT builds one causal mask over the whole row (transformers 5 does not pass its position_ids to
    create_causal_mask): a packed document's logits differed from the same tokens alone by 0.14, silently. Before the
    fix check_model (and so MetadataTrainer.train) accepted it."""
    from hf_ext.metadata import MetadataCollator, metadata_template

    model = tiny_opt(len(ctx_tokenizer))
    packed = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, block_size=40)
    with pytest.raises(ValueError, match=r"OPTForCausalLM does not keep packed documents apart") as err:
        packed.check_model(model)
    assert "document_attention=False" in str(err.value) and "--document_attention false" in str(err.value)
    assert model.training  # the probe leaves the model's mode as it was
    # plain packing (one mask, positions through the row) and padded rows suit the model: accepted
    MetadataCollator(
        ctx_tokenizer, metadata_template("url_host"), block_size=40, document_attention=False
    ).check_model(model)
    MetadataCollator(ctx_tokenizer, metadata_template("url_host"), max_length=40).check_model(model)


def test_check_model_accepts_models_that_keep_documents_apart(ctx_tokenizer):
    """Llama derives per-document masks from the restarting positions (packed logits equal the documents alone, see
    test_packing_attention.py): accepted, in eval and in train mode."""
    from hf_ext.metadata import MetadataCollator, metadata_template

    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), block_size=40)
    model = tiny_llama(len(ctx_tokenizer), hidden=32)
    collator.check_model(model)
    assert model.training
    model.model.layers[0].eval()  # a submodule's own mode is kept too
    collator.check_model(model)
    assert model.training and not model.model.layers[0].training and model.model.layers[1].training
    collator.check_model(model.eval())
    assert not model.training


def test_metadata_trainer_refuses_opt_with_document_attention_before_any_step(ctx_tokenizer, tmp_path):
    import datasets
    from transformers import TrainingArguments

    from hf_ext.metadata import MetadataCollator, MetadataCooldownCallback, MetadataTrainer, metadata_template

    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, block_size=40)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2, remove_unused_columns=False,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    model = tiny_opt(len(ctx_tokenizer))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = MetadataTrainer(
        model=model, args=args, train_dataset=datasets.Dataset.from_list(PACK_ROWS * 2), data_collator=collator,
        callbacks=[MetadataCooldownCallback(collator)],
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"does not keep packed documents apart"):
        trainer.train()
    assert trainer.state.global_step == 0 and collator.batches_seen == 0
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())  # nothing trained


def test_the_recipe_refuses_opt_with_document_attention_before_writing(tmp_path):
    """The recipe's --model_type opt with the default --document_attention true was refused only when training began
    (MetadataCollator.check_model), after the run record and folders were written; now before any write, by a probe
    on a one-layer model of the same config. --document_attention false passes that probe."""
    from hf_ext.data.tokenizer import build_tokenizer
    from hf_ext.recipes import metadata_pretrain
    from hf_ext.recipes.metadata_pretrain import MetadataArguments, check_documents_kept_apart
    from hf_ext.recipes.pretrain import ModelArguments

    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"OPTForCausalLM does not keep packed documents apart"):
        metadata_pretrain.main(["--model_type", "opt", "--hidden_size", "32", "--num_hidden_layers", "2",
                                "--num_attention_heads", "4", "--max_steps", "2", "--output_dir", str(out),
                                "--vocab_size", "512"])  # fmt: skip
    assert not out.exists()
    tokenizer = build_tokenizer(512)
    data = type("Data", (), {"block_size": 64})
    opt = ModelArguments(model_type="opt", hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    check_documents_kept_apart(opt, data, MetadataArguments(document_attention=False), tokenizer)
    check_documents_kept_apart(ModelArguments(), data, MetadataArguments(), tokenizer)  # the default FOG: accepted


def test_the_trainer_and_its_cooldown_callback_probe_the_model_once(ctx_tokenizer, tmp_path, monkeypatch):
    """MetadataTrainer.train and MetadataCooldownCallback.on_train_begin both ran check_model on the same collator:
    the document-attention probe's two forward passes ran twice at every training start."""
    import datasets
    from transformers import TrainingArguments

    import hf_ext.metadata.collator as collator_module
    from hf_ext.metadata import MetadataCollator, MetadataCooldownCallback, MetadataTrainer, metadata_template

    calls = []
    probe = collator_module.check_document_attention
    monkeypatch.setattr(collator_module, "check_document_attention", lambda m: calls.append(m) or probe(m))
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, block_size=40)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, remove_unused_columns=False,
        report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    model = tiny_llama(len(ctx_tokenizer), hidden=32)
    for callbacks in ([MetadataCooldownCallback(collator)], []):
        calls.clear()
        MetadataTrainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_list(PACK_ROWS * 2), data_collator=collator,
            callbacks=callbacks,
        ).train()  # fmt: skip
        assert len(calls) == 1, callbacks  # once, by the callback or (without one) by the trainer
