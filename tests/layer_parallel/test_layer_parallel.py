"""Layer-paired inference: exactness of the merged layers, caches, generation, save/load, errors, fine-tune mode."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    StaticCache,
)

from hf_ext.models.layer_parallel import LayerParallelConfig, LayerParallelForCausalLM, convert_to_layer_parallel

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=6,
    num_attention_heads=4,
    max_position_embeddings=128,
    initializer_range=0.15,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


def _randomize_gains_and_biases(model):
    """Norm gains far from 1 and non-zero biases, so that folding and bias handling are really exercised."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(0.5 + torch.rand(param.shape, generator=gen))
            elif name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def _build(kind: str, attn: str = "sdpa"):
    torch.manual_seed(0)
    if kind == "llama_mha":
        model = LlamaForCausalLM(LlamaConfig(**COMMON, num_key_value_heads=4, attn_implementation=attn))
    elif kind == "llama_gqa":
        cfg = LlamaConfig(
            **COMMON, num_key_value_heads=2, attention_bias=True, mlp_bias=True, attn_implementation=attn
        )
        model = LlamaForCausalLM(cfg)
    elif kind == "mistral":
        model = MistralForCausalLM(
            MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=6, attn_implementation=attn)
        )
    elif kind == "qwen2":
        cfg = Qwen2Config(
            **COMMON,
            num_key_value_heads=2,
            use_sliding_window=True,
            sliding_window=6,
            max_window_layers=2,
            attn_implementation=attn,
        )
        model = Qwen2ForCausalLM(cfg)
    else:
        raise AssertionError(kind)
    return _randomize_gains_and_biases(model).eval()


@pytest.fixture(scope="module")
def sources():
    return {k: _build(k) for k in ("llama_mha", "llama_gqa", "mistral", "qwen2")}


@pytest.fixture(scope="module")
def ids():
    return torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))


# ---------------------------------------------------------------------------------------------------------------------
# An independent reference, written from the source model's own modules
# ---------------------------------------------------------------------------------------------------------------------


def reference_logits(src, ids, pairs, mode="sublayer", mlp_norm="per_layer"):
    """Sequential source layers, except pairs: h = x + A_a(N1_a x) + A_b(N1_b x); y = h + M_a(N2_a h) + M_b(N2_b h)
    ("sublayer") or y = x + (L_a(x) - x) + (L_b(x) - x) ("block"). Needs an eager-attention source model."""
    inner = src.model
    seq = ids.shape[1]
    q, k = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
    full_mask = torch.zeros(seq, seq).masked_fill(k > q, float("-inf"))[None, None]
    window = getattr(src.config, "sliding_window", None) or seq
    sliding_mask = full_mask.masked_fill(q - k >= window, float("-inf"))
    cfg = src.config
    types = (
        getattr(cfg, "layer_types", None)
        or ["sliding_attention" if getattr(cfg, "sliding_window", None) else "full_attention"] * cfg.num_hidden_layers
    )
    masks = [sliding_mask if t == "sliding_attention" else full_mask for t in types]
    pos = torch.arange(seq)[None]
    x = inner.embed_tokens(ids)
    pe = inner.rotary_emb(x, pos)
    paired = {a: b for a, b in pairs}

    def attn(layer, inp, mask):
        return layer.self_attn(hidden_states=inp, position_embeddings=pe, attention_mask=mask)[0]

    def full_layer(layer, inp, mask):
        return layer(inp, attention_mask=mask, position_embeddings=pe, position_ids=pos)

    i = 0
    while i < len(inner.layers):
        if i not in paired:
            x = full_layer(inner.layers[i], x, masks[i])
            i += 1
            continue
        la, lb, mask = inner.layers[i], inner.layers[i + 1], masks[i]
        if mode == "block":
            x = x + (full_layer(la, x, mask) - x) + (full_layer(lb, x, mask) - x)
        else:
            h = x + attn(la, la.input_layernorm(x), mask) + attn(lb, lb.input_layernorm(x), mask)
            if mlp_norm == "per_layer":
                x = h + la.mlp(la.post_attention_layernorm(h)) + lb.mlp(lb.post_attention_layernorm(h))
            else:  # neurons [0, I/2) of both MLPs read N2_a(h), neurons [I/2, I) read N2_b(h)
                na, nb = la.post_attention_layernorm(h), lb.post_attention_layernorm(h)
                x = h
                for mlp in (la.mlp, lb.mlp):
                    half = mlp.gate_proj.out_features // 2
                    g = torch.cat([mlp.gate_proj(na)[..., :half], mlp.gate_proj(nb)[..., half:]], -1)
                    u = torch.cat([mlp.up_proj(na)[..., :half], mlp.up_proj(nb)[..., half:]], -1)
                    x = x + mlp.down_proj(mlp.act_fn(g) * u)
        i += 2
    return src.lm_head(inner.norm(x))


# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_empty_range_is_bit_identical(sources, ids):
    src = sources["llama_gqa"]
    ref = src(ids).logits
    for lp in (convert_to_layer_parallel(src, 3, 3), convert_to_layer_parallel(src, pairs=[])):
        assert isinstance(lp, LayerParallelForCausalLM)
        assert lp.config.num_hidden_layers == 6
        assert torch.equal(lp(ids).logits, ref)
    # also step by step with a cache
    cache_src, cache_lp = DynamicCache(config=src.config), DynamicCache(config=lp.config)
    src(ids[:, :8], cache=cache_src, use_cache=True)
    lp(ids[:, :8], cache=cache_lp, use_cache=True)
    assert torch.equal(src(ids[:, 8:], cache=cache_src).logits, lp(ids[:, 8:], cache=cache_lp).logits)


CASES = [
    ("llama_mha", "sublayer", "per_layer"),
    ("llama_gqa", "sublayer", "per_layer"),
    ("llama_gqa", "sublayer", "official_tp_split"),
    ("llama_gqa", "block", "per_layer"),
    ("llama_mha", "block", "per_layer"),
    ("mistral", "sublayer", "per_layer"),
    ("qwen2", "sublayer", "per_layer"),
    ("qwen2", "block", "per_layer"),
]


@pytest.mark.parametrize("kind,mode,mlp_norm", CASES)
@torch.no_grad()
def test_merged_equals_branch_sum_and_reference(sources, ids, kind, mode, mlp_norm):
    src = sources[kind]
    pairs = [[0, 1], [2, 3]] if kind == "qwen2" else [[1, 2], [3, 4]]  # qwen2: layers 0-1 full, 2-5 sliding
    merged = convert_to_layer_parallel(src, pairs=pairs, mode=mode, merge=True, mlp_norm=mlp_norm)
    branches = convert_to_layer_parallel(src, pairs=pairs, mode=mode, merge=False, mlp_norm=mlp_norm)
    lm, lb = merged(ids).logits, branches(ids).logits
    torch.testing.assert_close(lm, lb, atol=1e-5, rtol=0)
    # the pairing really changes the function (otherwise the comparisons above prove nothing)
    assert (lm - src(ids).logits).abs().max() > 1e-2
    # one cache slot per merged pair, two per unmerged pair
    assert merged.config.num_hidden_layers == 4 and branches.config.num_hidden_layers == 6
    eager_src = _build(kind, attn="eager")
    ref = reference_logits(eager_src, ids, pairs, mode, mlp_norm)
    torch.testing.assert_close(lm, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(lb, ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "kind,mode,merge",
    [
        ("llama_gqa", "sublayer", True),
        ("llama_gqa", "sublayer", False),
        ("llama_mha", "block", True),
        ("mistral", "sublayer", True),
        ("qwen2", "block", False),
    ],
)
@torch.no_grad()
def test_cached_generation_equals_full_reforward(sources, ids, kind, mode, merge):
    src = sources[kind]
    lp = convert_to_layer_parallel(src, 2, 6, mode=mode, merge=merge)
    lp.generation_config.eos_token_id = None  # fixed length, so the hand-written loop below compares token by token
    prompt = ids[:, :6]
    kwargs = dict(max_new_tokens=10, do_sample=False)
    full = lp.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(lp.generate(prompt, **kwargs), full)
    assert torch.equal(lp.generate(prompt, cache_implementation="static", **kwargs), full)
    # greedy continuation recomputed by hand without any cache
    seq = prompt
    for _ in range(10):
        seq = torch.cat([seq, lp(seq, use_cache=False).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(seq, full)


@torch.no_grad()
def test_cache_layout_and_static_cache(sources, ids):
    src = sources["llama_gqa"]
    lp = convert_to_layer_parallel(src, 2, 6)
    assert lp.config.num_hidden_layers == lp.config.effective_depth == 4
    cache = DynamicCache(config=lp.config)
    lp(ids, cache=cache, use_cache=True)
    assert len(cache.layers) == 4
    kv_heads = [layer.keys.shape[1] for layer in cache.layers]
    assert kv_heads == [2, 2, 4, 4]  # merged pairs hold the KV heads of both layers
    # StaticCache, filled in two steps, gives the logits of one full forward
    static = StaticCache(config=lp.config, max_cache_len=32)
    first = lp(ids[:, :7], cache=static, use_cache=True).logits
    second = lp(ids[:, 7:], cache=static, use_cache=True).logits
    torch.testing.assert_close(torch.cat([first, second], 1), lp(ids, use_cache=False).logits, atol=1e-5, rtol=0)
    assert lp._get_static_cache_init_shape() == ([2, 2, 4, 4], 16)


@pytest.mark.parametrize("merge,mode", [(True, "sublayer"), (False, "block")])
@torch.no_grad()
def test_save_and_from_pretrained_round_trip(sources, ids, tmp_path, merge, mode):
    src = sources["qwen2"]
    lp = convert_to_layer_parallel(src, 2, 4, mode=mode, merge=merge)
    lp.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded, LayerParallelForCausalLM)
    assert loaded.config.lp_pairs == [[2, 3]] and loaded.config.lp_merged is merge and loaded.config.lp_mode == mode
    assert loaded.config.source_config.model_type == "qwen2"
    assert torch.equal(loaded(ids).logits, lp(ids).logits)
    kwargs = dict(max_new_tokens=6, do_sample=False)
    assert torch.equal(loaded.generate(ids[:, :5], **kwargs), lp.generate(ids[:, :5], **kwargs))


@torch.no_grad()
def test_attention_kernel_follows_model_config(sources, ids):
    lp = convert_to_layer_parallel(sources["llama_gqa"], 0, 4)
    sdpa = lp(ids).logits
    lp.set_attn_implementation("eager")
    eager = lp(ids).logits
    assert lp.model.layers[0].self_attn.config._attn_implementation == "eager"
    assert lp.model.layers[1].self_attn.config._attn_implementation == "eager"  # a merged pair
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


def test_clear_errors(sources):
    src = sources["llama_gqa"]
    with pytest.raises(ValueError, match="odd length"):
        convert_to_layer_parallel(src, 1, 4)
    with pytest.raises(ValueError, match="out of range"):
        convert_to_layer_parallel(src, 2, 8)
    with pytest.raises(ValueError, match="out of range"):
        convert_to_layer_parallel(src, -2, 2)
    with pytest.raises(ValueError, match="overlap"):
        convert_to_layer_parallel(src, pairs=[[1, 2], [2, 3]])
    with pytest.raises(ValueError, match="adjacent"):
        convert_to_layer_parallel(src, pairs=[[1, 3]])
    with pytest.raises(ValueError, match="out of range"):
        convert_to_layer_parallel(src, pairs=[[5, 6]])
    with pytest.raises(ValueError, match="`mode` must be one of"):
        convert_to_layer_parallel(src, 0, 2, mode="diagonal")
    with pytest.raises(ValueError, match="official_tp_split"):
        convert_to_layer_parallel(src, 0, 2, mode="block", mlp_norm="official_tp_split")
    with pytest.raises(ValueError, match="attention types"):
        convert_to_layer_parallel(sources["qwen2"], 1, 3)  # layer 1 full attention, layer 2 sliding
    with pytest.raises(TypeError, match="already"):
        convert_to_layer_parallel(convert_to_layer_parallel(src, 0, 2), 0, 2)
    with pytest.raises(ValueError, match="model_type"):
        LayerParallelConfig(source_config={"model_type": "gpt2"})
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ValueError, match="supports"):
        convert_to_layer_parallel(gpt2, 0, 2)


def test_finetune_mode_trains_only_the_pairs(sources, ids):
    lp = convert_to_layer_parallel(sources["llama_gqa"], 2, 6)
    trainable = lp.set_pair_finetuning()
    assert trainable and all(n.startswith(("model.layers.2.", "model.layers.3.")) for n in trainable)
    frozen = {n: p.detach().clone() for n, p in lp.named_parameters() if not p.requires_grad}
    assert "model.embed_tokens.weight" in frozen and "model.layers.0.self_attn.q_proj.weight" in frozen
    lp.train()
    opt = torch.optim.SGD([p for p in lp.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(6):
        loss = lp(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(p, frozen[n]) for n, p in lp.named_parameters() if n in frozen)
    assert len(lp.set_pair_finetuning(False)) == len(list(lp.parameters()))
    with pytest.raises(ValueError, match="no paired layers"):
        convert_to_layer_parallel(sources["llama_gqa"], 0, 0).set_pair_finetuning()


@pytest.mark.gpu
@torch.no_grad()
def test_cuda_bf16_merged_pairs_and_compiled_static_generation(sources, ids):
    src = _build("llama_gqa").to("cuda", torch.bfloat16)
    merged = convert_to_layer_parallel(src, 2, 6)
    branches = convert_to_layer_parallel(src, 2, 6, merge=False)
    assert next(merged.parameters()).dtype == torch.bfloat16 and next(merged.parameters()).is_cuda
    x = ids.cuda()
    torch.testing.assert_close(merged(x).logits.float(), branches(x).logits.float(), atol=5e-2, rtol=5e-2)
    merged.generation_config.eos_token_id = None
    out = merged.generate(x[:, :6], max_new_tokens=8, do_sample=False, cache_implementation="static")
    assert out.shape == (2, 14)


def test_convert_without_a_range_or_pairs_is_refused():
    """lp22: `convert_to_layer_parallel(model)` returned the source model unpaired, silently; `start == end` and
    `pairs=[]` still give the unpaired control on purpose."""
    from transformers import LlamaConfig, LlamaForCausalLM

    src = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)
    )
    with pytest.raises(ValueError, match="Name the layers to pair: `start` and `end`"):
        convert_to_layer_parallel(src)
    assert convert_to_layer_parallel(src, 2, 2).config.num_hidden_layers == 4
    assert convert_to_layer_parallel(src, pairs=[]).config.num_hidden_layers == 4
