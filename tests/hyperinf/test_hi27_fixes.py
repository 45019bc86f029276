"""Audit hi27: a GLUE-style `label` column is refused with the rename that fixes it; a non-finite matrix given to
`schulz_inverse`, or a GFIM that overflows its dtype in the engine, is refused as such (both were reported as a Schulz
divergence whose fix was another start)."""

import pytest
import torch

from hf_ext.hyperinf import (
    InfluenceEstimator,
    SchulzDivergenceError,
    influence_from_gradients,
    schulz_inverse,
)


@pytest.mark.parametrize("column", ["label", "label_ids"])
def test_label_column_is_refused_with_the_rename(column):
    """A tokenized GLUE dataset keeps its class in `label` (Trainer's collators rename it to `labels`); the refusal
    said to add labels the dataset already has."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    model = get_peft_model(
        BertForSequenceClassification(config), LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"])
    )
    rows = [{"input_ids": [1, 5, 2], column: 0}, {"input_ids": [1, 7, 9, 2], column: 1}]
    with pytest.raises(ValueError, match=rf"has a `{column}` column but no `labels`.*rename_column\('{column}'"):
        InfluenceEstimator(model).fit(rows)


@pytest.mark.parametrize("init", ["identity", "frobenius"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_schulz_inverse_refuses_a_non_finite_matrix(init, bad):
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[0, 1] = matrix[1, 0] = bad
    with pytest.raises(ValueError, match="`matrix` holds NaN or inf") as info:
        schulz_inverse(matrix, init=init, tol=1e-6)
    assert not isinstance(info.value, SchulzDivergenceError)


def test_engine_names_a_gfim_overflow():
    """Finite float32 gradients whose GFIM sum passes float32's range: the fix is the dtype, not the Schulz start. (A
    float16 `dtype` no longer overflows there: the sums are accumulated in at least float32, hi31 F1.)"""
    gen = torch.Generator().manual_seed(0)
    train = {"l": 1e19 * torch.randn(200, 4, 8, generator=gen)}
    val = {"l": torch.randn(3, 4, 8, generator=gen)}
    with pytest.raises(ValueError, match=r"layer 'l' overflowed in dtype=torch.float32.*dtype=torch.float64") as info:
        influence_from_gradients(train, val, "hyperinf")
    assert not isinstance(info.value, SchulzDivergenceError)
    scores = influence_from_gradients(train, val, "hyperinf", dtype=torch.float64)
    assert bool(torch.isfinite(scores).all())
    half = {"l": 30 * torch.randn(200, 4, 8, generator=gen)}  # its GFIM sum passes float16's 65504
    assert bool(torch.isfinite(influence_from_gradients(half, val, "hyperinf", dtype=torch.float16)).all())


def _tiny_t5():
    from peft import LoraConfig, get_peft_model
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=40, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = get_peft_model(
        T5ForConditionalGeneration(config).double(), LoraConfig(r=2, lora_alpha=4, target_modules=["q", "v"])
    )
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    return model.eval()


def _seq2seq_rows(count, seed, max_length=None):
    """Targets (5-8 tokens) longer than the inputs (2-4); with `max_length`, both stored padded to it as a seq2seq
    preprocessing does (`padding="max_length"`, pad labels -100)."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        source = torch.randint(2, 40, (2 + i % 3,), generator=gen).tolist()
        target = torch.randint(2, 40, (5 + i % 4,), generator=gen).tolist()
        if max_length is None:
            rows.append({"input_ids": source, "labels": target})
            continue
        pad_source, pad_target = max_length - len(source), max_length - len(target)
        rows.append(
            {
                "input_ids": source + [0] * pad_source,
                "attention_mask": [1] * len(source) + [0] * pad_source,
                "labels": target + [-100] * pad_target,
            }
        )
    return rows


@pytest.mark.parametrize("stored_padded", [False, True])
@pytest.mark.parametrize("per_example_gradients", ["loop", "vmap"])
def test_encoder_decoder_targets_longer_than_inputs(stored_padded, per_example_gradients):
    """An encoder-decoder's labels were padded to its inputs' length (a target longer than its input failed in the
    collator) and, stored padded to the inputs' length, cut to the inputs' real tokens (silently other gradients,
    1.26 relative error on TracIn scores). Reference: the model's own loss on each example as stored."""
    model = _tiny_t5()
    length = 10 if stored_padded else None
    train, val = _seq2seq_rows(6, 1, length), _seq2seq_rows(2, 2, length)
    estimator = InfluenceEstimator(model, "tracin", dtype=torch.float64, per_example_gradients=per_example_gradients)
    params = dict(model.named_parameters())

    def gradients(rows):
        out = []
        for row in rows:
            loss = model(**{key: torch.tensor([value]) for key, value in row.items()}).loss
            grads = torch.autograd.grad(loss, [params[m.name] for m in estimator.tracked])
            out.append(
                torch.cat([(g.T if m.kind == "lora_B" else g).reshape(-1) for m, g in zip(estimator.tracked, grads)])
            )
        return torch.stack(out)

    expected = -(gradients(train) @ gradients(val).mean(0)).numpy()
    scores = estimator.fit(train).scores(val)
    assert abs(scores - expected).max() <= 1e-6 * abs(expected).max()
