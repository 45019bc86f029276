"""Fixes of the lp15 audit (the refusals below were missing before the fixes; the accepted cases guard the rest):

F1 `convert_to_layer_parallel` refuses a source whose decoder projections (or LM head) are not plain `nn.Linear`:
   an `hf_ext.fp8.convert`-ed source (torchao `Float8Linear`) was paired into plain linears that dropped FP8 silently,
   the emulated `Fp8Linear` failed with a 50-key "Weight layout mismatch" dump. The documented order (pair, then FP8)
   works.
F2 `scripts/bench_layer_parallel.py` checks `--lp_mode`, `--attn_implementation` and the head ratio before building a
   model, naming the flag, and refuses a `--num_pairs` whose default range cannot end before the last layer (its start
   was clamped to 0, so the range covered the last layer, unlike the help said).
F3 `config.source_config = copy` on a built config is accepted only when the copy computes the same function (all of
   `to_dict()` equal but `initializer_range` and bookkeeping fields); another `hidden_act` or `rope_parameters` was
   accepted, the model kept the old function and saved as another one.
"""

import copy

import pytest
import torch
from torch import nn
from transformers import HfArgumentParser, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel architecture)
from hf_ext.fp8 import convert as fp8_convert
from hf_ext.fp8 import fp8_converted_modules
from hf_ext.models.layer_parallel import convert_to_layer_parallel


def _llama(seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, attn_implementation="eager",
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


# F1 ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fp8_kwargs, kind",
    [({"backend": "torchao", "emulate": True}, "Float8Linear"), ({"backend": "emulated"}, "Fp8Linear")],
)
def test_an_fp8_source_is_refused_naming_the_module_and_the_order(fp8_kwargs, kind):
    model = _llama()
    fp8_convert(model, **fp8_kwargs)
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == kind
    with pytest.raises(TypeError, match=rf"(?s)model\.layers\.0\.self_attn\.q_proj is {kind}.*Pair first"):
        convert_to_layer_parallel(model, 2, 2)
    with pytest.raises(TypeError, match=r"hf_ext\.fp8\.convert\(convert_to_layer_parallel\(model"):
        convert_to_layer_parallel(model, 0, 2, mode="block")


def test_pairing_first_then_fp8_computes_what_the_fp8_source_computes():
    """The order the refusal names: a start == end conversion followed by FP8 equals the FP8 source."""
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(1))
    fp8_source = _llama()
    lp = convert_to_layer_parallel(_llama(), 2, 2)
    fp8_convert(fp8_source, backend="torchao", emulate=True)
    fp8_convert(lp, backend="torchao", emulate=True)
    assert len(fp8_converted_modules(lp)) == len(fp8_converted_modules(fp8_source)) == 28
    with torch.no_grad():
        torch.testing.assert_close(lp(ids).logits, fp8_source(ids).logits, rtol=0, atol=0)
    paired = convert_to_layer_parallel(_llama(), 0, 2)  # a real pair converts to FP8 as well
    fp8_convert(paired, backend="emulated")
    assert fp8_converted_modules(paired)


def test_other_replaced_linears_are_refused_by_name():
    class MyLinear(nn.Linear):
        pass

    model = _llama()
    old = model.model.layers[1].mlp.down_proj
    model.model.layers[1].mlp.down_proj = MyLinear(old.in_features, old.out_features, bias=False)
    with pytest.raises(TypeError, match=r"model\.layers\.1\.mlp\.down_proj is MyLinear\)"):
        convert_to_layer_parallel(model, 0, 2)

    class NotALinear(nn.Module):  # e.g. a kernel library's linear that is no nn.Linear subclass
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(64, 32))

    model = _llama()
    model.lm_head = NotALinear()
    with pytest.raises(TypeError, match=r"lm_head is NotALinear\)"):
        convert_to_layer_parallel(model, 0, 2)
    convert_to_layer_parallel(_llama(), 0, 2)  # plain linears: accepted


# F2 ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--lp_mode", "blocks"], r"--lp_mode must be one of \['sublayer', 'block'\], got 'blocks'"),
        (["--attn_implementation", "sdpa_typo"], r"--attn_implementation 'sdpa_typo' cannot be used"),
        (["--num_key_value_heads", "3"], r"--num_key_value_heads \(3\) must divide --num_attention_heads \(4\)"),
        (["--num_key_value_heads", "0"], r"--num_key_value_heads \(0\) must divide --num_attention_heads \(4\)"),
        (["--num_pairs", "4"], r"--num_pairs 4 from the default --lp_start does not fit 8 layers: .* 9 layers"),
    ],
)
def test_bench_checks_flags_before_building_a_model(bench, monkeypatch, argv, match):
    built, from_config = [], bench.LlamaForCausalLM._from_config

    def watched(*args, **kwargs):  # a model with weights (not on the meta device) is a build
        built.append(torch.empty(0).device)
        return from_config(*args, **kwargs)

    monkeypatch.setattr(bench.LlamaForCausalLM, "_from_config", watched)
    with pytest.raises(ValueError, match=match):
        bench.main(["--tiny", "--repeats", "1", "--new_tokens", "2", "--batch_sizes", "1", *argv])
    assert all(device.type == "meta" for device in built)  # only the weightless check of --attn_implementation


def test_bench_default_range_ends_before_the_last_layer_and_explicit_start_may_cover_it(bench):
    def resolve(argv):
        (args,) = HfArgumentParser(bench.BenchArguments).parse_args_into_dataclasses(args=argv)
        return bench._resolve(args)

    args = resolve(["--tiny", "--num_pairs", "3"])
    assert (args.lp_start, args.lp_start + 2 * args.num_pairs) == (1, 7)  # layer 7, the last, stays unpaired
    args = resolve(["--tiny", "--num_pairs", "4", "--lp_start", "0"])  # given explicitly: the whole model
    assert (args.lp_start, args.lp_start + 2 * args.num_pairs) == (0, 8)
    assert resolve(["--tiny", "--attn_implementation", "eager"]).attn_implementation == "eager"
    assert (
        "which needs 2 * pairs + 1 layers" in bench.BenchArguments.__dataclass_fields__["num_pairs"].metadata["help"]
    )


# F3 ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("hidden_act", "gelu"),
        ("rope_parameters", {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}),
        ("rms_norm_eps", 1e-3),
        ("attention_dropout", 0.5),
    ],
)
def test_a_source_config_copy_that_changes_the_function_is_refused(field, value):
    lp = convert_to_layer_parallel(_llama(), 0, 2)
    before = copy.deepcopy(lp.config.source_config.to_dict())
    changed = copy.deepcopy(lp.config.source_config)
    setattr(changed, field, value)
    with pytest.raises(ValueError, match=r"(?s)source_config cannot be changed .* LayerParallelConfig\("):
        lp.config.source_config = changed
    assert lp.config.source_config.to_dict() == before


def test_a_source_config_copy_that_keeps_the_function_is_accepted():
    """transformers' `_config_zero_init` (common tests) puts back a copy with another `initializer_range`; bookkeeping
    and output switches do not change what the model computes either."""
    lp = convert_to_layer_parallel(_llama(), 0, 2)
    changed = copy.deepcopy(lp.config.source_config)
    changed.initializer_range = 1e-10
    changed._name_or_path = "somewhere/else"
    changed.output_hidden_states = True
    lp.config.source_config = changed
    assert lp.config.source_config is changed
    for field, value in (("dtype", torch.bfloat16), ("use_cache", False)):  # rv15b: dtype was refused by the guard
        changed = copy.deepcopy(lp.config.source_config)
        setattr(changed, field, value)
        lp.config.source_config = changed
        assert getattr(lp.config.source_config, field) == value
