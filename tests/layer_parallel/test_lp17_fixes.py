"""Fixes of the lp17 audit.

F1 A built layer-parallel model picks each block's full or sliding-window mask at construction. A `sliding_window` set
   on its config (or a `from_pretrained` keyword, or a direct edit of `config.source_config`) that changed the layers'
   attention types was accepted: the in-memory model kept full attention while the saved config said sliding-window,
   so the reloaded model computed another function. Such changes are now refused by name; changes that keep the
   types (another window on a Mistral source) keep working, and the in-memory and reloaded logits are equal. A Llama
   source ignores `sliding_window` (as `LlamaForCausalLM` does), so its layer-parallel form does too.
F2 `scripts/bench_layer_parallel.py`: see `test_bench_invalid_repeats.py`.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel architecture)
from hf_ext.models.layer_parallel import convert_to_layer_parallel

FULL, SLIDING = "full_attention", "sliding_attention"
_SHAPE = dict(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, attn_implementation="sdpa",
)  # fmt: skip


def _ids():
    return torch.randint(3, 97, (1, 12), generator=torch.Generator().manual_seed(1))


def _source(kind, **overrides):
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**_SHAPE, **overrides)).eval()
    return MistralForCausalLM(MistralConfig(**_SHAPE, **overrides)).eval()


@torch.no_grad()
def _logits(model):
    return model(_ids()).logits


def _reloaded_logits(model, path):
    model.save_pretrained(path)
    return _logits(AutoModelForCausalLM.from_pretrained(path))


@pytest.mark.parametrize("merged", [True, False])
def test_sliding_window_on_a_llama_based_model_changes_nothing_in_memory_or_reloaded(tmp_path, merged):
    source = _source("llama")
    lp = convert_to_layer_parallel(source, pairs=[[1, 2]], merge=merged)
    before = _logits(lp)
    lp.config.sliding_window = 4  # Llama has no sliding-window attention: as on LlamaForCausalLM, nothing changes
    assert lp.config.layer_types == [FULL] * lp.config.num_hidden_layers
    torch.testing.assert_close(_logits(lp), before, rtol=0, atol=0)
    # was: the saved config said sliding_attention on every layer, max |in-memory - reloaded| = 0.149
    torch.testing.assert_close(_reloaded_logits(lp, tmp_path / "lp"), before, rtol=0, atol=1e-6)


def test_a_llama_source_with_a_sliding_window_in_its_config_converts_to_full_attention():
    source = _source("llama", sliding_window=4)  # LlamaForCausalLM ignores it
    lp = convert_to_layer_parallel(source, pairs=[])
    assert lp.config.layer_types == [FULL] * 4
    # was: every layer sliding-window, 0.17 away from the source
    torch.testing.assert_close(_logits(lp), _logits(source), rtol=0, atol=1e-6)


def test_from_pretrained_with_sliding_window_on_a_llama_folder_keeps_the_saved_function(tmp_path):
    lp = convert_to_layer_parallel(_source("llama"), pairs=[[1, 2]])
    lp.save_pretrained(tmp_path)
    back = AutoModelForCausalLM.from_pretrained(tmp_path, sliding_window=4)
    assert back.config.layer_types == [FULL] * 3  # was: [sliding_attention] * 3
    torch.testing.assert_close(_logits(back), _logits(lp), rtol=0, atol=1e-6)


@pytest.mark.parametrize("start, new", [(None, 4), (4, None)])
def test_a_sliding_window_that_changes_the_attention_types_is_refused_on_a_built_config(start, new):
    lp = convert_to_layer_parallel(_source("mistral", sliding_window=start), pairs=[[1, 2]])
    types = list(lp.config.layer_types)
    # was: accepted; the in-memory model kept its masks, the saved one used the others (0.251 apart)
    with pytest.raises(ValueError, match=rf"sliding_window={new!r} cannot be set.*convert_to_layer_parallel"):
        lp.config.sliding_window = new
    with pytest.raises(ValueError, match=rf"sliding_window={new!r} cannot be set"):
        lp.config.update({"sliding_window": new})
    assert lp.config.sliding_window == lp.config.source_config.sliding_window == start
    assert lp.config.layer_types == types


def test_another_window_of_the_same_type_keeps_working_and_reloads_the_same(tmp_path):
    lp = convert_to_layer_parallel(_source("mistral", sliding_window=4), pairs=[[1, 2]])
    before = _logits(lp)
    lp.config.sliding_window = 8  # a 12-token input: the window matters
    assert lp.config.source_config.sliding_window == 8
    now = _logits(lp)
    assert (now - before).abs().max() > 1e-3  # the in-memory model follows the edit ...
    torch.testing.assert_close(_reloaded_logits(lp, tmp_path / "lp"), now, rtol=0, atol=1e-6)  # ... as the reload


@pytest.mark.parametrize("keyword", [{"sliding_window": 4}, {"source_config": {"sliding_window": 4}}])
def test_from_pretrained_refuses_a_keyword_that_changes_the_attention_types(tmp_path, keyword):
    lp = convert_to_layer_parallel(_source("mistral", sliding_window=None), pairs=[[1, 2]])
    lp.save_pretrained(tmp_path)
    # was: accepted, every layer of the loaded model sliding-window, unlike the saved one
    with pytest.raises(ValueError, match=r"sliding_window.*changes the attention types.*Drop the keyword"):
        AutoModelForCausalLM.from_pretrained(tmp_path, **keyword)
    # a keyword that keeps the types (or repeats the saved value) still loads the saved function
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(tmp_path, sliding_window=None)), _logits(lp), rtol=0, atol=1e-6
    )


def test_saving_after_a_direct_source_config_edit_of_the_attention_types_is_refused(tmp_path):
    lp = convert_to_layer_parallel(_source("mistral", sliding_window=None), pairs=[[1, 2]])
    lp.config.source_config.sliding_window = 4  # bypasses the top-level config
    with pytest.raises(ValueError, match=r"source_config was edited.*layer_types=\['sliding_attention'"):
        lp.save_pretrained(tmp_path)
    lp.config.source_config.sliding_window = None
    lp.save_pretrained(tmp_path)  # restored: saves


def test_a_folder_saved_with_a_llama_sliding_window_names_the_cause_and_loads_once_layer_types_is_dropped(tmp_path):
    # rv17b: hf_ext before this fix saved layer_types=sliding for a Llama source whose config carries sliding_window
    # (which LlamaForCausalLM ignores); loading such a folder must say so and how to load it with full attention
    import json

    source = _source("llama", sliding_window=4)
    lp = convert_to_layer_parallel(source, pairs=[(1, 2)])
    lp.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    cfg = json.loads(path.read_text())
    cfg["layer_types"] = [SLIDING] * len(cfg["layer_types"])  # what the older version wrote
    path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"Llama source .*sliding_window=4.*delete the `layer_types` entry"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    del cfg["layer_types"]
    path.write_text(json.dumps(cfg))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.layer_types == [FULL] * len(reloaded.config.layer_types)
    torch.testing.assert_close(_logits(reloaded), _logits(lp))
