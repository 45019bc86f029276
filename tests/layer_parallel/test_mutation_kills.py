"""Mutation-testing gaps of the layer-paired model: behaviour checked against the pairing the spec defines (pairs
(start, start + 1), (start + 2, start + 3), ...; blocks in source order), not against snapshots of current outputs."""

import torch

from hf_ext.models.layer_parallel import convert_to_layer_parallel


def test_finetune_mode_unfreezes_the_pair_blocks_not_the_source_indices(source):
    """Pairs (0, 1) and (2, 3) of a 5-layer source become blocks 0 and 1; block 2 is source layer 4 and stays
    frozen (a block index is not a source layer index once a pair precedes it)."""
    lp = convert_to_layer_parallel(source, pairs=[[0, 1], [2, 3]])
    assert len(lp.model.layers) == 3
    trainable = set(lp.set_pair_finetuning())
    expected = {n for n, _ in lp.named_parameters() if n.startswith(("model.layers.0.", "model.layers.1."))}
    assert trainable == expected
    assert not any(p.requires_grad for n, p in lp.named_parameters() if n.startswith("model.layers.2."))


def _pair_reference(source, x, a, mode):
    """(state after branch a, pair output) from the source's own layers a, a + 1 (eager attention, causal)."""
    la, lb = source.model.layers[a], source.model.layers[a + 1]
    seq = x.shape[1]
    mask = torch.zeros(seq, seq).masked_fill(torch.ones(seq, seq).triu(1).bool(), float("-inf"))[None, None]
    pos = torch.arange(seq)[None]
    pe = source.model.rotary_emb(x, pos)

    def attn(layer, inp):
        out = layer.self_attn(hidden_states=layer.input_layernorm(inp), position_embeddings=pe, attention_mask=mask)
        return out[0]

    if mode == "block":
        f_a = la(x, attention_mask=mask, position_embeddings=pe, position_ids=pos) - x
        f_b = lb(x, attention_mask=mask, position_embeddings=pe, position_ids=pos) - x
        return x + f_a, x + f_a + f_b
    h = x + attn(la, x) + attn(lb, x)
    tap = h + la.mlp(la.post_attention_layernorm(h))
    return tap, tap + lb.mlp(lb.post_attention_layernorm(h))


@torch.no_grad()
def test_unmerged_pair_reports_the_state_after_branch_a_then_its_output(source, ids):
    """Docs: an unmerged pair owns two cache slots and reports two hidden states: the residual stream with only
    branch a's last contribution added (`h + M_a(N2_a h)` / `x + f_a(x)`), then the pair's output."""
    ref_states = source(ids, output_hidden_states=True).hidden_states
    for mode in ("sublayer", "block"):
        lp = convert_to_layer_parallel(source, 2, 4, mode=mode, merge=False)
        states = lp(ids, output_hidden_states=True).hidden_states
        assert len(states) == 6  # embeddings, layer 0, layer 1, pair (two slots), layer 4 (after the final norm)
        tap, out = _pair_reference(source, ref_states[2], 2, mode)
        torch.testing.assert_close(states[3], tap, atol=1e-5, rtol=0, msg=mode)
        torch.testing.assert_close(states[4], out, atol=1e-5, rtol=0, msg=mode)
        assert (tap - out).abs().max() > 1e-3  # branch b's contribution is really missing from the first state
