"""Classifier-free guidance (`hf_ext.metadata`) on a layer-paired model: the converted model is rotary like its source
(the settings sit in `config.source_config`), so a batch whose unconditional prompts need padding is generated in one
call, as for the source. It was taken for a model without rotary embeddings: prompt by prompt, with a false warning,
and sampling with a seed then differed from the source even with bit-identical logits."""

import torch

from hf_ext.data import build_tokenizer
from hf_ext.metadata import add_context_tokens, generate_with_metadata_guidance
from hf_ext.models.layer_parallel import convert_to_layer_parallel

PROMPTS = ["The return value of the function is", "import", "A list is", "Raises ValueError when the"]
METAS = ["a.org", "b.org", "c.org", "d.org"]


def test_guidance_batches_a_layer_paired_model_as_its_source():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(512)
    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=4, num_attention_heads=4, bos_token_id=tok.bos_token_id,
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()  # fmt: skip
    add_context_tokens(tok, source)
    outputs, batch_sizes = {}, {}
    for name, model in (("source", source), ("paired", convert_to_layer_parallel(source, 0, 0).eval())):
        calls = []
        generate = model.generate
        model.generate = lambda *a, _g=generate, _c=calls, **k: _c.append(k["input_ids"].shape[0]) or _g(*a, **k)
        torch.manual_seed(0)
        outputs[name] = generate_with_metadata_guidance(model, tok, PROMPTS, METAS, guidance_scale=2.0,
                                                        return_text=False, do_sample=True, max_new_tokens=6)  # fmt: skip
        batch_sizes[name] = calls
    assert batch_sizes["paired"] == batch_sizes["source"] == [len(PROMPTS)]
    assert torch.equal(outputs["paired"], outputs["source"])  # empty pairing: the source's logits, the same samples

