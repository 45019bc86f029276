"""Slow: the packaged tasks tell a briefly trained tiny model from its untrained initialization (3 seeds)."""

import json
import statistics

import pytest
import torch

pytest.importorskip("lm_eval")

STEPS = 300


def _train(tok, blocks, seed, steps, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=2048,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = blocks[torch.randint(len(blocks), (16,), generator=gen)]
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


@pytest.mark.slow
def test_tasks_separate_trained_from_untrained(small_tokenizer, corpus):
    from hf_ext.data import pack_dataset
    from hf_ext.evaluation import evaluate_models, format_table

    blocks = torch.tensor(pack_dataset(corpus, small_tokenizer, block_size=128)["input_ids"])
    per_seed = []
    for seed in (0, 1, 2):
        models = {f"untrained-s{seed}": _train(small_tokenizer, blocks, seed, 0)}
        models[f"trained-s{seed}"] = _train(small_tokenizer, blocks, seed, STEPS)
        rows = evaluate_models(models, num_fewshot=0, tokenizer=small_tokenizer, batch_size=16)
        print(format_table(rows))
        val = {(r["model"].split("-")[0], r["task"], r["metric"]): r["value"] for r in rows}
        per_seed.append(val)
        # the control: an untrained model; training lowers the cloze word perplexity by orders of magnitude
        assert val[("trained", "hf_ext_cloze", "perplexity")] * 100 < val[("untrained", "hf_ext_cloze", "perplexity")]
    summary = {}
    for key in per_seed[0]:
        xs = [v[key] for v in per_seed]
        summary["/".join(key)] = {"mean": statistics.mean(xs), "std": statistics.stdev(xs)}
    print(json.dumps(summary, indent=1))


@pytest.mark.slow
def test_layer_pairing_retention_curve_on_trained_models(small_tokenizer, corpus, corpus_test):
    """The paper's retention curve at toy scale: a trained 4-layer model, each adjacent pair run in parallel."""
    from hf_ext.data import pack_dataset
    from hf_ext.evaluation import format_task_sweep_table, layer_pairing_task_sweep

    blocks = torch.tensor(pack_dataset(corpus, small_tokenizer, block_size=128)["input_ids"])
    held_out = pack_dataset(corpus_test, small_tokenizer, block_size=128)
    ranges = [(0, 2), (1, 3), (2, 4)]
    ratios = {r: [] for r in ranges}
    for seed in (0, 1, 2):
        model = _train(small_tokenizer, blocks, seed, STEPS, layers=4)
        rows = layer_pairing_task_sweep(
            model, small_tokenizer, ranges, tasks=["hf_ext_cloze"], metric="perplexity", eval_dataset=held_out,
            batch_size=16,
        )  # fmt: skip
        print(format_task_sweep_table(rows, "perplexity"))
        for r in rows[1:]:
            ratios[(r["start"], r["end"])].append((r["ppl_ratio"], r["retention"]))
        # pairing a trained model costs held-out perplexity for every range (the control is the unpaired row)
        assert all(r["ppl_ratio"] > 1.0 for r in rows[1:])
        # and pairing the first two layers costs the most (the paper pairs middle-to-late layers)
        assert max(rows[1:], key=lambda r: r["ppl_ratio"])["start"] == 0
    for rng, vals in ratios.items():
        ppl = [v[0] for v in vals]
        ret = [v[1] for v in vals]
        print(rng, "ppl_ratio", statistics.mean(ppl), statistics.stdev(ppl), "retention", statistics.mean(ret),
              statistics.stdev(ret))  # fmt: skip
