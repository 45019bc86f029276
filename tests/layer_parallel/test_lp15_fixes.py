"""Fixes of the lp15 audit (the refusals below were missing before the fixes; the accepted cases guard the rest):

F1 `convert_to_layer_parallel` refuses a source whose decoder projections (or LM head) are not plain `nn.Linear`:
   an `hf_ext.fp8.convert`-ed source (torchao `Float8Linear`) was paired into plain linears that dropped FP8 silently,
   the emulated `Fp8Linear` failed with a 50-key "Weight layout mismatch" dump. The documented order (pair, then FP8)
   works.
"""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

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
