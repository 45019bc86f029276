"""Layer-paired models behave like a mature transformers causal LM: optional outputs, tuples, attention kernel of the
nested source config, per-slot KV heads, and loading that refuses configs which no longer fit the saved weights."""

import importlib.util
import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, LlamaConfig
from transformers.configuration_utils import get_head_shapes

from hf_ext.models.layer_parallel import (
    LayerParallelConfig,
    LayerParallelForCausalLM,
    LayerParallelModel,
    convert_to_layer_parallel,
)

MODES = [(True, "sublayer"), (False, "sublayer"), (True, "block"), (False, "block")]


def _source_dict(**overrides):
    return LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4, **overrides
    ).to_dict()


# --------------------------------------------------------------------------------------------------------------------
# Robust loading
# --------------------------------------------------------------------------------------------------------------------


def test_config_without_source_config_raises():
    with pytest.raises(ValueError, match="needs `source_config`"):
        LayerParallelConfig()
    with pytest.raises(ValueError, match="needs `source_config`"):
        LayerParallelConfig.from_dict({"model_type": "layer_parallel", "lp_start": 0, "lp_end": 2})


@pytest.mark.parametrize("merge", [True, False])
def test_edited_saved_config_fails_clearly(source, tmp_path, merge):
    lp = convert_to_layer_parallel(source, 1, 3, merge=merge)
    lp.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    edited = json.loads(path.read_text())
    edited["source_config"]["num_hidden_layers"] = 7
    path.write_text(json.dumps(edited))
    with pytest.raises(
        ValueError, match=r"edited after its weight layout was recorded \(.*source.num_hidden_layers: saved 5"
    ):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    # A config saved without the layout record (older files): the missing decoder weights are named at load time.
    edited.pop("lp_weight_layout")
    path.write_text(json.dumps(edited))
    with pytest.warns(UserWarning, match="no weights for .* decoder parameters.* initialised at random"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    path.write_text(json.dumps(saved))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.config.lp_weight_layout == lp.config.weight_layout()


def test_in_memory_edits_are_recorded_when_saving(tmp_path):
    """Changing the config in Python before saving is not an 'edited file': the record is written at save time."""
    cfg = LayerParallelConfig(source_config=_source_dict(), lp_start=0, lp_end=2)
    cfg.source_config.intermediate_size = 64
    cfg.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).lp_weight_layout["source.intermediate_size"] == 64


@pytest.mark.parametrize("merge", [True, False])
def test_mirrored_config_edits_survive_save_and_reload(tmp_path, ids, merge):
    """Setting a mirrored attribute on a built config (as transformers' own TP / FSDP testers set
    `tie_word_embeddings`, and users set `pad_token_id` or `use_cache`) is saved: before, the saved source config kept
    the old value, so a tied model reloaded untied with a randomly initialised `lm_head`."""
    cfg = LayerParallelConfig(
        source_config=_source_dict(tie_word_embeddings=False), lp_pairs=[[1, 2]], lp_merged=merge
    )
    cfg.tie_word_embeddings = True
    cfg.pad_token_id, cfg.use_cache = 3, False
    torch.manual_seed(0)
    model = LayerParallelForCausalLM(cfg).eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.tie_word_embeddings and reloaded.config.source_config.tie_word_embeddings
    assert (reloaded.config.pad_token_id, reloaded.config.use_cache) == (3, False)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_mirrored_attributes_given_to_the_constructor_are_honoured(tmp_path):
    """`LayerParallelConfig(source_config=..., pad_token_id=7)` used to drop the keyword silently (the source's value
    won); it now sets the copied source config, and the original source config object is untouched."""
    src = LlamaConfig(**{**_source_dict(pad_token_id=0), "model_type": "llama"})
    cfg = LayerParallelConfig(
        source_config=src, lp_pairs=[[1, 2]], pad_token_id=7, tie_word_embeddings=True, vocab_size=80, use_cache=False
    )
    for key, value in dict(pad_token_id=7, tie_word_embeddings=True, vocab_size=80, use_cache=False).items():
        assert getattr(cfg, key) == value and getattr(cfg.source_config, key) == value, key
    assert (src.pad_token_id, src.vocab_size, src.use_cache) == (0, 64, True)
    model = LayerParallelForCausalLM(cfg)
    assert model.model.embed_tokens.weight.shape[0] == 80 and model.lm_head.weight is model.model.embed_tokens.weight
    cfg.save_pretrained(tmp_path)
    reloaded = AutoConfig.from_pretrained(tmp_path, pad_token_id=5, rms_norm_eps=1e-3)
    assert (reloaded.pad_token_id, reloaded.source_config.pad_token_id) == (5, 5)
    assert (reloaded.rms_norm_eps, reloaded.source_config.rms_norm_eps) == (1e-3, 1e-3)
    assert reloaded.vocab_size == 80 and reloaded.use_cache is False
    # A hand-edited top-level mirror of a saved file is read as a setting of the source, so a shape change is caught
    # by the layout record like an edit of `source_config`.
    saved = json.loads((tmp_path / "config.json").read_text())
    saved["vocab_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="source.vocab_size: saved 80 -> now 96"):
        AutoConfig.from_pretrained(tmp_path)


def test_resized_embeddings_survive_save_and_reload(source, tmp_path, ids):
    """`resize_token_embeddings` sets `config.vocab_size` on the (layer-parallel) text config; the saved source config
    must carry it, or the reload fails on the embedding shapes."""
    lp = convert_to_layer_parallel(source, 1, 3).eval()
    lp.resize_token_embeddings(80)
    assert lp.config.source_config.vocab_size == 80
    lp.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.vocab_size == 80 and reloaded.lm_head.weight.shape[0] == 80
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, lp(ids).logits)


def test_mirror_write_through_is_not_serialized(tmp_path):
    cfg = LayerParallelConfig(source_config=_source_dict(), lp_start=0, lp_end=2)
    assert not any(key.startswith("_lp") for key in cfg.to_dict())
    cfg.save_pretrained(tmp_path)
    assert "_lp_mirrors_write_through" not in (tmp_path / "config.json").read_text()


@pytest.mark.parametrize(
    "folder, keywords, match",
    [
        ("merged", dict(lp_merged=False), r"lp_merged: saved True -> now False"),
        ("merged", dict(lp_start=3, lp_end=5), r"lp_pairs: saved \[\[1, 2\]\] -> now \[\[3, 4\]\]"),
        ("merged", dict(lp_pairs=[[0, 1]]), r"lp_pairs: saved \[\[1, 2\]\] -> now \[\[0, 1\]\]"),
        ("merged", dict(lp_mode="block"), r"lp_mode: saved 'sublayer' -> now 'block'"),
        ("merged", dict(lp_mlp_norm="official_tp_split"), r"lp_mlp_norm: saved 'per_layer' -> now 'official_tp"),
        ("merged", dict(hidden_size=48), r"source.hidden_size: saved 32 -> now 48"),
        ("merged", dict(source_config={"num_hidden_layers": 7}), r"source.num_hidden_layers: saved 5 -> now 7"),
        ("block", dict(lp_mlp_norm="official_tp_split"), r"official_tp_split' only exists for lp_mode='sublayer'"),
    ],
)
def test_from_pretrained_keywords_that_contradict_the_saved_weights_fail_before_loading(
    source, tmp_path, folder, keywords, match
):
    """A `from_pretrained` keyword for the pairing or a weight shape is a constructor argument, validated and checked
    against the saved `lp_weight_layout`. Before, transformers set it after `__post_init__`: `lp_merged=False` on a
    merged folder built an unmerged model with random branches (and the merged slot count, so forward raised an
    IndexError); `lp_start`/`lp_end` or `lp_mlp_norm` were accepted without effect and the saved folder then failed to
    load."""
    mode = "block" if folder == "block" else "sublayer"
    convert_to_layer_parallel(source, 1, 3, mode=mode).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=match):
        AutoModelForCausalLM.from_pretrained(tmp_path, **keywords)


def test_from_pretrained_keywords_that_keep_the_layout_still_apply(source, tmp_path, ids):
    lp = convert_to_layer_parallel(source, 1, 3, merge=False).eval()
    lp.save_pretrained(tmp_path)
    # rms_norm_eps is mirrored at the top level of the saved config: the new source config's value must win
    rope = {"rope_parameters": {"rope_type": "default", "rope_theta": 20000.0}, "rms_norm_eps": 1e-3}
    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path, lp_merged=False, lp_start=1, lp_end=3, pad_token_id=5, source_config=rope
    ).eval()
    assert reloaded.config.lp_pairs == [[1, 2]] and reloaded.config.num_hidden_layers == 5
    assert (reloaded.config.pad_token_id, reloaded.config.source_config.pad_token_id) == (5, 5)
    assert reloaded.config.rms_norm_eps == reloaded.config.source_config.rms_norm_eps == 1e-3
    assert reloaded.config.source_config.rope_parameters["rope_theta"] == 20000.0
    with torch.no_grad():
        assert not torch.equal(reloaded(ids).logits, lp(ids).logits)  # the new RoPE base is used


@pytest.mark.parametrize(
    "key, value",
    [
        ("lp_merged", False),
        ("lp_start", 0),
        ("lp_end", 5),
        ("lp_pairs", [[3, 4]]),
        ("lp_mode", "block"),
        ("lp_mlp_norm", "official_tp_split"),
        ("source_config", LlamaConfig(**_source_dict())),
    ],
)
def test_structural_fields_cannot_be_changed_on_a_built_config(source, tmp_path, ids, key, value):
    """Before, `model.config.lp_mode = "block"` was accepted but ignored by the built model, and the saved folder then
    reloaded as a block-mode model (other logits); `lp_start` / `lp_mlp_norm` made the saved folder unloadable."""
    lp = convert_to_layer_parallel(source, 1, 3).eval()
    setattr(lp.config, key, getattr(lp.config, key))  # the same value is no change
    with pytest.raises(ValueError, match=rf"{key} cannot be changed on a built LayerParallelConfig"):
        setattr(lp.config, key, value)
    lp.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, lp(ids).logits, rtol=0, atol=0)


def test_a_source_config_copy_that_keeps_the_structure_can_be_put_back(source):
    """transformers' `_config_zero_init` (its `test_can_load_ignoring_mismatched_shapes`, weight-init helpers) deep-copies
    the config and sets each sub-config back with another `initializer_range`: refusing that broke the common test."""
    import copy

    lp = convert_to_layer_parallel(source, 1, 3)
    changed = copy.deepcopy(lp.config.source_config)
    changed.initializer_range = 1e-10
    lp.config.source_config = changed
    assert lp.config.source_config.initializer_range == 1e-10
    assert lp.config.weight_layout() == convert_to_layer_parallel(source, 1, 3).config.weight_layout()
    lp.config.update(lp.config.to_dict())  # a no-op update (its source_config is a dict) is no change either
    assert isinstance(lp.config.source_config, type(changed)) and lp.config.source_config.initializer_range == 1e-10
    for field, value in (("num_key_value_heads", 4), ("attention_bias", True), ("mlp_bias", True)):
        wider = copy.deepcopy(changed)
        setattr(wider, field, value)  # the weight layout changes (mirrored or layout-only field): still refused
        with pytest.raises(
            ValueError, match=r"(?s)source_config cannot be changed .* LayerParallelConfig\(source_config=\.\.\.\)"
        ):
            lp.config.source_config = wider


# --------------------------------------------------------------------------------------------------------------------
# Conformance
# --------------------------------------------------------------------------------------------------------------------


def test_attn_implementation_reaches_the_source_sub_config():
    cfg = LayerParallelConfig(source_config=_source_dict(), lp_start=0, lp_end=2, attn_implementation="eager")
    assert cfg.source_config._attn_implementation == "eager"
    assert "source_config" in LayerParallelConfig.sub_configs
    cfg._attn_implementation = "sdpa"
    assert cfg.source_config._attn_implementation == "sdpa"


@pytest.mark.parametrize("merge,mode", MODES)
@torch.no_grad()
def test_hidden_states_and_attentions_one_per_slot(source, ids, merge, mode):
    lp = convert_to_layer_parallel(source, 2, 4, mode=mode, merge=merge)
    out = lp(ids, output_hidden_states=True, output_attentions=True)
    ref = source(ids, output_hidden_states=True, output_attentions=True)
    slots = lp.config.num_hidden_layers
    assert slots == (4 if merge else 5)
    assert len(out.hidden_states) == slots + 1
    assert len(out.attentions) == slots
    # Layers 0 and 1 are unpaired: their states and maps are the source model's.
    for i in range(3):
        torch.testing.assert_close(out.hidden_states[i], ref.hidden_states[i])
    for i in range(2):
        torch.testing.assert_close(out.attentions[i], ref.attentions[i])
    heads = [a.shape[1] for a in out.attentions]
    assert heads == ([4, 4, 8, 4] if merge else [4] * 5)  # a merged pair's map holds the heads of both layers
    torch.testing.assert_close(out.hidden_states[-1], lp.model(ids).last_hidden_state)  # after the final norm


@pytest.mark.parametrize("merge,mode", MODES)
@torch.no_grad()
def test_return_dict_false_gives_tuples(source, ids, merge, mode):
    lp = convert_to_layer_parallel(source, 0, 2, mode=mode, merge=merge)
    labels = ids.clone()
    full = lp(ids, labels=labels)
    as_tuple = lp(ids, labels=labels, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], full.loss)
    torch.testing.assert_close(as_tuple[1], full.logits)
    base = lp.model(ids, return_dict=False)
    assert isinstance(base, tuple)
    torch.testing.assert_close(base[0], lp.model(ids).last_hidden_state)
    assert isinstance(LayerParallelModel(lp.config)(ids, return_dict=False), tuple)


@pytest.mark.parametrize("merge", [True, False])
@torch.no_grad()
def test_kv_heads_per_slot_matches_the_cache(source, ids, merge):
    lp = convert_to_layer_parallel(source, 0, 4, merge=merge)
    cache = DynamicCache(config=lp.config)
    lp(ids, cache=cache, use_cache=True)
    heads = [layer.keys.shape[1] for layer in cache.layers]
    assert heads == lp.config.kv_heads_per_slot() == ([4, 4, 2] if merge else [2] * 5)
    # transformers' own cache sizing (the StaticCache `generate` allocates, its TP head split) reads the same heads
    # from `config.per_layer_config`; it gives one int when every slot has the same heads.
    expected = heads if merge else heads[0]
    assert get_head_shapes(lp.config) == (expected, lp.config.head_dim)
    assert lp._get_static_cache_init_shape() == (expected, lp.config.head_dim)


@pytest.mark.parametrize("merge", [True, False])
def test_per_layer_config_gives_each_slot_its_heads(source, merge):
    lp = convert_to_layer_parallel(source, 0, 4, merge=merge)
    config, src = lp.config, lp.config.source_config
    slots = config.per_layer_config
    assert len(slots) == config.num_hidden_layers
    assert [s.num_key_value_heads for s in slots] == config.kv_heads_per_slot()
    assert [s.num_attention_heads for s in slots] == config.attention_heads_per_slot()
    assert all(s.head_dim == config.head_dim for s in slots)
    assert slots["full_attention"] is config  # transformers' RoPE set-up indexes it by layer type
    with pytest.raises(ValueError, match="not one of config.layer_types"):
        slots["sliding_attention"]
    # The wide slots are copies: building them never writes the doubled heads into the shared source config.
    assert (config.num_key_value_heads, src.num_key_value_heads) == (2, 2)
    assert (config.num_attention_heads, src.num_attention_heads) == (4, 4)
    assert "per_layer_config" not in config.to_dict()
    config.per_layer_config = None  # transformers resets it on some paths: a no-op
    with pytest.raises(ValueError, match="per_layer_config"):
        config.per_layer_config = {0: {"num_key_value_heads": 8}}


@torch.no_grad()
def test_generate_with_static_cache_allocates_per_slot_heads(source, ids):
    lp = convert_to_layer_parallel(source, 0, 4).eval()  # merged: slots of 4, 4, 2 KV heads
    # chunked prefill makes `generate` allocate the StaticCache up front, with the heads transformers reads per slot
    out = lp.generate(ids[:1, :6], max_new_tokens=4, do_sample=False, cache_implementation="static",
                      prefill_chunk_size=4, return_dict_in_generate=True)  # fmt: skip
    assert [layer.keys.shape[1] for layer in out.cache.layers] == [4, 4, 2]
    dynamic = lp.generate(ids[:1, :6], max_new_tokens=4, do_sample=False)
    assert torch.equal(out.sequences, dynamic)


@torch.no_grad()
def test_assisted_generation_with_attentions(source, ids):
    """transformers' assisted decoding reads the attention maps; it crashed when they came back as `None`."""
    lp = convert_to_layer_parallel(source, 2, 4)
    assistant = convert_to_layer_parallel(source, 0, 4)
    out = lp.generate(
        ids[:1],
        assistant_model=assistant,
        max_new_tokens=4,
        do_sample=False,
        output_attentions=True,
        return_dict_in_generate=True,
        pad_token_id=0,
    )
    plain = lp.generate(ids[:1], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out.sequences, plain)
    assert all(a is not None for step in out.attentions for a in step)


@torch.no_grad()
def test_past_key_values_is_a_deprecated_alias_of_cache(source, ids):
    lp = convert_to_layer_parallel(source, 2, 4)
    with pytest.warns(FutureWarning, match="`past_key_values` is deprecated"):
        old = lp(ids, past_key_values=DynamicCache(config=lp.config), use_cache=True)
    new = lp(ids, cache=DynamicCache(config=lp.config), use_cache=True)
    torch.testing.assert_close(old.logits, new.logits)
    assert old.cache.get_seq_length() == ids.shape[1]


@pytest.mark.parametrize("cls", [LayerParallelModel, LayerParallelForCausalLM])
def test_forward_declares_transformers_kwargs(cls):
    """transformers' tools (and its common tests) read the typed `**kwargs` to know that `output_attentions` and the
    other standard keyword arguments are accepted, as for Llama."""
    import inspect

    kwargs = inspect.signature(cls.forward).parameters["kwargs"]
    assert "output_attentions" in kwargs.annotation.__args__[0].__annotations__


@torch.no_grad()
def test_continuous_batching_runs_unmerged_pairs_and_refuses_merged_ones(source):
    """transformers' `generate_batch` sizes one paged KV cache with a single head count. Before, merged pairs failed
    inside its worker thread and every request came back with no tokens (only a log line)."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    small = ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64)  # a paged cache sized for the test, not RAM
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]
    config = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=-1)
    unmerged = convert_to_layer_parallel(source, 0, 4, merge=False).eval()
    expected = [unmerged.generate(torch.tensor([p]), generation_config=config)[0, len(p) :].tolist() for p in prompts]
    out = unmerged.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=small)
    got = {tuple(r.prompt_ids): r.generated_tokens for r in out.values()}
    assert [got[tuple(p)] for p in prompts] == expected

    merged = convert_to_layer_parallel(source, 0, 4, merge=True).eval()
    with pytest.raises(ValueError, match=r"lp_merged=False"):
        merged.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=small)


def test_set_attn_implementation_reaches_the_source_layers_without_warning(source, ids):
    """Before, every `set_attn_implementation` call warned that the sub-config was set "without finding the associated
    sub-model ... undefined behavior", although the source layers are the model's own and follow it."""
    from transformers.testing_utils import CaptureLogger
    from transformers.utils import logging

    lp = convert_to_layer_parallel(source, 0, 4).eval()
    attention = lp.model.layers[0].self_attn
    for implementation in ("sdpa", "eager"):
        with CaptureLogger(logging.get_logger("transformers.modeling_utils")) as captured:
            lp.set_attn_implementation(implementation)
        assert "without finding the associated sub-model" not in captured.out
        assert attention.config._attn_implementation == lp.config._attn_implementation == implementation
    with torch.no_grad():
        eager = lp(ids).logits
        lp.set_attn_implementation("sdpa")
        torch.testing.assert_close(lp(ids).logits, eager, atol=1e-5, rtol=0)
    if importlib.util.find_spec("flash_attn") is None:  # an implementation that is not installed: nothing may change
        with pytest.raises(ImportError):
            lp.set_attn_implementation("flash_attention_2")
        assert (lp.config._attn_implementation, attention.config._attn_implementation) == ("sdpa", "sdpa")


def test_docs_list_every_mirrored_field_whose_nested_edit_is_overridden(repo_root):
    """The docs listed sizes, heads, vocabulary and tying only; the override applies to every mirrored field."""
    from hf_ext.models.layer_parallel.configuration_layer_parallel import _MIRRORED_SOURCE_ATTRIBUTES

    with open(f"{repo_root}/docs/layer_parallel.md", encoding="utf-8") as fh:
        text = " ".join(fh.read().split())
    start = text.index("The source fields the config also keeps at its top level")
    sentence = text[start : text.index("not reported.", start)]
    assert "edit of only the nested copy is overridden" in sentence
    assert [key for key in _MIRRORED_SOURCE_ATTRIBUTES if f"`{key}`" not in sentence] == []


@pytest.mark.parametrize("merge", [True, False])
def test_a_source_loaded_with_cpu_and_disk_offload_converts_as_the_in_memory_one(source, ids, tmp_path, merge):
    """Audit lp12 finding 1: a source opened with accelerate's big-model loading (`device_map="auto"` beyond the
    memory budget, `offload_folder`) has placeholder (meta) tensors in its state_dict; the conversion built the whole
    model and then failed to copy out of them. The weights are now read back through accelerate; a model whose weights
    were never loaded is refused."""
    source.save_pretrained(tmp_path / "src")
    offloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "src",
        device_map="auto",
        max_memory={"cpu": "60KB"},
        offload_folder=str(tmp_path / "offload"),
        attn_implementation="eager",
    )
    assert "disk" in set(offloaded.hf_device_map.values())
    assert any(v.is_meta for v in offloaded.state_dict().values())
    lp = convert_to_layer_parallel(offloaded, pairs=[[1, 2]], merge=merge)
    expected = convert_to_layer_parallel(source, pairs=[[1, 2]], merge=merge)
    assert {p.device.type for p in lp.parameters()} == {"cpu"}
    with torch.no_grad():
        torch.testing.assert_close(lp(ids).logits, expected(ids).logits, rtol=0, atol=0)
    with torch.device("meta"):
        empty = type(source)(source.config)
    with pytest.raises(ValueError, match="weights on the meta device"):
        convert_to_layer_parallel(empty, pairs=[[1, 2]])


def _tied_source(kind: str):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cls, config_cls = {"llama": (AutoModelForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config)}[kind]
    config = config_cls(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, attn_implementation="eager",
    )  # fmt: skip
    return (AutoModelForCausalLM.from_config(config) if cls is AutoModelForCausalLM else cls(config)).eval()


def _is_tied(model) -> bool:
    return model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("merge", [True, False])
def test_a_tied_source_converts_to_a_tied_model(kind, merge, ids, tmp_path):
    """audit rv13: the conversion builds its model under `no_init_weights`, which skips the tying, so a source with
    `tie_word_embeddings=True` (Qwen2-0.5B-style) gave a converted model whose lm_head was a second Parameter:
    fine-tuning it trained two matrices (parameter count of the fresh model + vocab x hidden)."""
    source = _tied_source(kind)
    assert _is_tied(source)
    lp = convert_to_layer_parallel(source, pairs=[[1, 2]], merge=merge)
    assert lp.config.tie_word_embeddings and _is_tied(lp)
    fresh = LayerParallelForCausalLM(lp.config)
    assert sum(p.numel() for p in lp.parameters()) == sum(p.numel() for p in fresh.parameters())
    same = convert_to_layer_parallel(source, start=1, end=1, merge=merge)  # no pair: the source's computation
    with torch.no_grad():
        torch.testing.assert_close(same(ids).logits, source(ids).logits, rtol=0, atol=0)

    lp.train()
    lp(input_ids=ids, labels=ids).loss.backward()
    torch.optim.SGD(lp.parameters(), lr=1.0).step()
    assert _is_tied(lp) and torch.equal(lp.lm_head.weight, lp.model.embed_tokens.weight)

    lp.eval().save_pretrained(tmp_path / "lp")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "lp", attn_implementation="eager").eval()
    assert _is_tied(reloaded)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, lp(ids).logits, rtol=0, atol=0)


def test_a_tied_source_offloaded_to_disk_converts_to_a_tied_model(ids, tmp_path):
    """The offloaded path (weights read back through accelerate) ties the same way."""
    source = _tied_source("qwen2")
    source.save_pretrained(tmp_path / "src")
    offloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "src", device_map="auto", max_memory={"cpu": "30KB"}, offload_folder=str(tmp_path / "offload"),
        attn_implementation="eager",
    )  # fmt: skip
    assert "disk" in set(offloaded.hf_device_map.values())
    lp = convert_to_layer_parallel(offloaded, pairs=[[1, 2]])
    assert _is_tied(lp)
    with torch.no_grad():
        expected = convert_to_layer_parallel(source, pairs=[[1, 2]])(ids).logits
        torch.testing.assert_close(lp(ids).logits, expected, rtol=0, atol=0)


def test_a_source_whose_config_says_tied_but_whose_head_differs_is_refused_by_name(ids):
    """Such a source (a checkpoint whose config is wrong; transformers loads it untied) would have its lm_head
    replaced by the embeddings when tied: refused, naming the setting; with the config corrected it converts untied."""
    source = _tied_source("llama")
    source.lm_head.weight = torch.nn.Parameter(source.lm_head.weight.detach() + 0.5)
    with pytest.raises(ValueError, match="tie_word_embeddings = False"):
        convert_to_layer_parallel(source, pairs=[[1, 2]])
    source.config.tie_word_embeddings = False
    lp = convert_to_layer_parallel(source, start=1, end=1)
    assert not lp.config.tie_word_embeddings and not _is_tied(lp)
    with torch.no_grad():
        torch.testing.assert_close(lp(ids).logits, source(ids).logits, rtol=0, atol=0)
