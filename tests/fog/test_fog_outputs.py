"""Issue 15 item 5: FOG's outputs follow transformers' conventions (hidden states, attentions, return_dict=False),
so that generate(output_hidden_states=..., return_dict_in_generate=True) and assisted decoding work."""

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM, FogModel

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=48)


def _model(cls=FogForCausalLM, **kw):
    torch.manual_seed(0)
    return cls._from_config(FogConfig.fog(**TINY, **kw), attn_implementation="eager").eval()


def test_hidden_states_are_embeddings_plus_every_layer():
    model = _model()
    ids = torch.randint(0, 64, (2, 5))
    out = model(ids, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == TINY["num_hidden_layers"] + 1
    torch.testing.assert_close(hs[0], model.model.embed_tokens(ids) * 50.0)
    layer0 = model.model.layers[0]
    pos = model.model.rotary_emb(hs[0], torch.arange(5)[None])
    causal = torch.full((5, 5), float("-inf")).triu(1)[None, None]
    torch.testing.assert_close(hs[1], layer0(hs[0], position_embeddings=pos, attention_mask=causal), atol=1e-4, rtol=0)
    # no final norm in FOG: the last hidden state feeds the LM head directly
    torch.testing.assert_close(model.lm_head(hs[-1]), out.logits)


def test_attentions_are_causal_probabilities():
    model = _model()
    out = model(torch.randint(0, 64, (2, 5)), output_attentions=True)
    assert len(out.attentions) == TINY["num_hidden_layers"]
    for a in out.attentions:
        assert a.shape == (2, 2, 5, 5)
        torch.testing.assert_close(a.sum(-1), torch.ones(2, 2, 5))
        assert torch.all(a.triu(1) == 0)


@pytest.mark.parametrize("cls", [FogModel, FogForCausalLM])
def test_return_dict_false_gives_tuples(cls):
    model = _model(cls)
    ids = torch.randint(0, 64, (1, 4))
    as_tuple = model(ids, return_dict=False, use_cache=False)
    assert isinstance(as_tuple, tuple)
    first = model(ids, use_cache=False)[0]
    torch.testing.assert_close(as_tuple[0], first)


def test_generate_dict_outputs_and_assisted_decoding():
    model = _model()
    ids = torch.randint(3, 64, (1, 4))
    kw = dict(max_new_tokens=3, do_sample=False, return_dict_in_generate=True, output_hidden_states=True,
              output_attentions=True, output_scores=True)  # fmt: skip
    greedy = model.generate(ids, **kw)
    assert len(greedy.hidden_states) == 3 and len(greedy.hidden_states[0]) == TINY["num_hidden_layers"] + 1
    assert greedy.attentions[1][0].shape == (1, 2, 1, 5)
    assistant = _model()
    assistant.generation_config.num_assistant_tokens = 2
    assisted = model.generate(ids, assistant_model=assistant, **kw)
    assert torch.equal(assisted.sequences, greedy.sequences)
    assert len(assisted.hidden_states) == 3


@pytest.mark.parametrize("recipe", [{}, {"qk_norm": "none", "hidden_act": "gelu"}])
@torch.no_grad()
def test_continuous_batching_gives_the_tokens_of_generate(recipe):
    """transformers' continuous batching (`generate_batch`, `transformers serve`) hands the paged cache the batch's
    layout through `cache.update(..., kwargs=...)`. Before, FOG's attention dropped it: every request failed inside the
    batching thread and came back with no tokens (only a log line)."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    model = _model(**recipe)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13, 14]]
    config = GenerationConfig(max_new_tokens=5, do_sample=False, eos_token_id=-1)
    expected = [model.generate(torch.tensor([p]), generation_config=config)[0, len(p) :].tolist() for p in prompts]
    small = ContinuousBatchingConfig(num_blocks=16, max_batch_tokens=64)  # a paged cache sized for the test, not RAM
    out = model.generate_batch(inputs=prompts, generation_config=config, continuous_batching_config=small)
    got = {tuple(r.prompt_ids): r.generated_tokens for r in out.values()}
    assert [got[tuple(p)] for p in prompts] == expected
