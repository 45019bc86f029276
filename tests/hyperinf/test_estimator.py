"""`InfluenceEstimator` on peft LoRA models built from configs: a causal LM and two sequence classifiers."""

import numpy as np
import pytest
import torch
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from scipy.stats import spearmanr
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from hf_ext.hyperinf import InfluenceEstimator, add_influence_column, influence_from_gradients, tracked_lora_parameters


def randomize_lora_b(model, seed=0, std=0.2):
    """peft starts LoRA B at zero (every lora_A gradient is then zero); give the adapter a trained-like state."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(std * torch.randn(param.shape, generator=gen))


def tiny_llama_config(vocab_size):
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
    )


@pytest.fixture(scope="module")
def causal_lm(small_tokenizer):
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(len(small_tokenizer)))
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    randomize_lora_b(peft_model)
    return peft_model


@pytest.fixture(scope="module")
def lm_data(corpus, small_tokenizer):
    ids = small_tokenizer(corpus["text"][:46], add_special_tokens=False)["input_ids"]
    rows = [{"input_ids": x[:20]} for x in ids]
    return Dataset.from_list(rows[:40]), Dataset.from_list(rows[40:])


def classification_model(kind, vocab_size, num_labels=3):
    torch.manual_seed(1)
    if kind == "bert":
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=num_labels,
            max_position_embeddings=64,
        )
        model, targets = BertForSequenceClassification(config), ["query", "value"]
    else:
        config = tiny_llama_config(vocab_size)
        config.num_labels = num_labels
        model, targets = LlamaForSequenceClassification(config), ["q_proj", "v_proj"]
    peft_model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=targets))
    randomize_lora_b(peft_model, seed=2)
    return peft_model


@pytest.fixture(scope="module")
def cls_data(corpus, small_tokenizer):
    domains = sorted(set(corpus["domain"]))[:3]
    rows = []
    for text, domain in zip(corpus["text"], corpus["domain"]):
        if domain in domains:
            ids = small_tokenizer(text, add_special_tokens=False)["input_ids"]
            rows.append({"input_ids": ids[: 8 + 3 * (len(rows) % 2)], "labels": domains.index(domain)})  # 2 lengths
        if len(rows) == 36:
            break
    return Dataset.from_list(rows[:30]), Dataset.from_list(rows[30:])


def reference_gradients(model, dataset):
    """Per-example gradients as the reference collects them: one backward per example, lora_B transposed."""
    model.eval()
    tracked = tracked_lora_parameters(model)
    params = dict(model.named_parameters())
    out = {m.name: [] for m in tracked}
    for example in dataset:
        model.zero_grad()
        inputs = {"input_ids": torch.tensor([example["input_ids"]])}
        inputs["labels"] = torch.tensor([example["labels"]]) if "labels" in example else inputs["input_ids"]
        model(**inputs).loss.backward()
        for m in tracked:
            grad = params[m.name].grad.detach().double()
            if m.kind == "lora_B":
                grad = grad.T
            out[m.name].append(grad.reshape(m.shape))
    model.zero_grad()
    return {name: torch.stack(values) for name, values in out.items()}


def test_rank_first_layout(causal_lm):
    tracked = tracked_lora_parameters(causal_lm)
    assert len(tracked) == 8  # 2 layers x (q, v) x (A, B)
    for m in tracked:
        assert m.shape[0] == 4  # the rank comes first
        if m.kind == "lora_A":
            assert m.shape == m.param_shape
        else:
            assert m.shape == (m.param_shape[1], m.param_shape[0])


def test_hyperinf_matches_exact_inverse_on_causal_lm(causal_lm, lm_data):
    train, val = lm_data
    exact = InfluenceEstimator(causal_lm, "exact").fit(train).scores(val)
    hyper = InfluenceEstimator(causal_lm, "hyperinf", schulz_iterations=100).fit(train)
    scores = hyper.scores(val)
    assert scores.shape == (len(train),) and scores.dtype == np.float64
    assert spearmanr(scores, exact).statistic >= 0.99
    assert all(info["schulz_converged"] for info in hyper.layer_info.values())
    # the reference's X_0 = 5e-5 I with a fixed 5 iterations is far from the inverse at this gradient scale
    short = InfluenceEstimator(causal_lm, "hyperinf", schulz_init="identity", schulz_iterations=5, schulz_tol=None)
    short_scores = short.fit(train).scores(val)
    assert max(info["schulz_residual"] for info in short.layer_info.values()) > 0.5
    assert np.abs(short_scores - exact).max() > 10 * np.abs(scores - exact).max()


def test_streamed_vmap_matches_reference_loop(causal_lm, lm_data):
    train, val = lm_data
    ref_train, ref_val = reference_gradients(causal_lm, train), reference_gradients(causal_lm, val)
    for method in ("hyperinf", "datainf", "tracin"):
        expected = influence_from_gradients(ref_train, ref_val, method=method, dtype=torch.float64).numpy()
        got = InfluenceEstimator(causal_lm, method, batch_size=16, dtype=torch.float64).fit(train).scores(val)
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_sequence_classification_all_methods(kind, cls_data, small_tokenizer):
    model = classification_model(kind, len(small_tokenizer))
    train, val = cls_data
    tracked = tracked_lora_parameters(model)
    assert any("modules_to_save" in m.name for m in tracked)  # the trained head is tracked, as in the reference
    assert all("modules_to_save" not in m.name for m in tracked_lora_parameters(model, modules_to_save="none"))
    ref_train, ref_val = reference_gradients(model, train), reference_gradients(model, val)
    for method, options in [
        ("hyperinf", {}),
        ("datainf", {}),
        ("lissa", {"lissa_iterations": 3}),
        ("tracin", {}),
        ("exact", {"exact_curvature": "fim"}),
    ]:
        expected = influence_from_gradients(ref_train, ref_val, method=method, dtype=torch.float64, **options)
        est = InfluenceEstimator(model, method, batch_size=4, dtype=torch.float64, **options).fit(train)
        got = est.scores(val)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-3, atol=1e-4 * float(expected.abs().max()))
    loop = InfluenceEstimator(model, "hyperinf", per_example_gradients="loop", dtype=torch.float64).fit(train)
    vmap = InfluenceEstimator(model, "hyperinf", dtype=torch.float64).fit(train)
    loop_scores, vmap_scores = loop.scores(val), vmap.scores(val)  # float32 model gradients either way
    np.testing.assert_allclose(loop_scores, vmap_scores, rtol=1e-4, atol=1e-5 * np.abs(vmap_scores).max())
    assert model.get_base_model().config._attn_implementation == "sdpa"  # restored after the vmapped passes


def test_modules_to_save_tracks_the_output_projection_weight_by_default(small_tokenizer, cls_data):
    """Issue 20.10: like the reference (`modules_to_save.default.out_proj.weight`), only the head's output projection
    weight joins the LoRA matrices by default; the head's `dense` layer and biases only with `modules_to_save="all"`."""
    config = RobertaConfig(
        vocab_size=len(small_tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=40, num_labels=3, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    roberta = get_peft_model(
        RobertaForSequenceClassification(config),
        LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["query", "value"]),
    )
    head = "base_model.model.classifier.modules_to_save.default."
    lora = [m.name for m in tracked_lora_parameters(roberta, modules_to_save="none")]
    assert len(lora) == 4 and all("lora_" in name for name in lora)
    assert [m.name for m in tracked_lora_parameters(roberta)] == lora + [head + "out_proj.weight"]
    everything = [m.name for m in tracked_lora_parameters(roberta, modules_to_save="all")]
    assert everything == lora + [head + p for p in ("dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias")]
    bert = classification_model("bert", len(small_tokenizer))
    names = [m.name for m in tracked_lora_parameters(bert) if "modules_to_save" in m.name]
    assert names == ["base_model.model.classifier.modules_to_save.default.weight"]  # no bias
    with pytest.raises(ValueError, match="modules_to_save"):
        tracked_lora_parameters(bert, modules_to_save=True)
    randomize_lora_b(roberta, seed=3)
    train, val = cls_data
    est = InfluenceEstimator(roberta, "hyperinf", batch_size=8)
    assert set(est.engine.shapes) == set(lora + [head + "out_proj.weight"])
    # the untracked but trainable head parameters must not put the per-example gradients on an autograd graph
    assert not any(t.requires_grad for t in next(est.gradients.iterate(train)).values())
    assert np.isfinite(est.fit(train).scores(val)).all()


def test_a_copy_of_the_eval_example_is_the_most_helpful(causal_lm, lm_data):
    train, _ = lm_data
    for method in ("hyperinf", "exact"):
        est = InfluenceEstimator(causal_lm, method).fit(train)
        for j in (3, 17):
            scores = est.scores(train.select([j]))
            assert int(np.argmin(scores)) == j and scores[j] < 0


def test_add_influence_column(causal_lm, lm_data):
    train, val = lm_data
    scores = InfluenceEstimator(causal_lm, "tracin").fit(train).scores(val)
    out = add_influence_column(train, scores)
    assert out.column_names == ["input_ids", "influence"]
    np.testing.assert_allclose(out["influence"], scores)
    with pytest.raises(ValueError, match="rows"):
        add_influence_column(train, scores[:-1])
    with pytest.raises(ValueError, match="already has a column"):
        add_influence_column(out, scores)
    with pytest.raises(TypeError):
        add_influence_column(train.to_list(), scores)


def test_clear_errors(causal_lm, lm_data, cls_data, small_tokenizer):
    train, val = lm_data
    plain = LlamaForCausalLM(tiny_llama_config(len(small_tokenizer)))
    with pytest.raises(ValueError, match="no LoRA layers"):
        InfluenceEstimator(plain)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        InfluenceEstimator("not a model")
    with pytest.raises(ValueError, match="method"):
        InfluenceEstimator(causal_lm, method="kfac")
    with pytest.raises(TypeError, match="Unknown option"):
        InfluenceEstimator(causal_lm, schulz_iters=3)
    with pytest.raises(ValueError, match="schulz_init"):
        InfluenceEstimator(causal_lm, schulz_init="random")
    with pytest.raises(ValueError, match="adapter"):
        InfluenceEstimator(causal_lm, adapter_name="other")
    est = InfluenceEstimator(causal_lm)
    with pytest.raises(RuntimeError, match="fit"):
        est.scores(val)
    with pytest.raises(ValueError, match="empty"):
        est.fit(train.select([]))
    with pytest.raises(ValueError, match="input_ids"):
        est.fit(Dataset.from_dict({"text": ["a"]}))
    est.fit(train)
    with pytest.raises(ValueError, match="empty"):
        est.scores([])
    with pytest.raises(ValueError, match="max_exact_dim"):
        InfluenceEstimator(causal_lm, "exact", exact_curvature="fim", max_exact_dim=16)
    with pytest.raises(ValueError, match="positive damping"):  # refused before any gradient pass
        InfluenceEstimator(causal_lm, "datainf", damping_scale=0.0)
    with pytest.raises(ValueError, match="`damping` must be finite"):
        InfluenceEstimator(causal_lm, "tracin", damping=float("inf"))
    cls_model = classification_model("bert", len(small_tokenizer))
    with pytest.raises(ValueError, match="labels"):
        InfluenceEstimator(cls_model).fit(cls_data[0].remove_columns("labels"))
    fresh = get_peft_model(
        LlamaForCausalLM(tiny_llama_config(len(small_tokenizer))), LoraConfig(r=2, target_modules=["q_proj"])
    )
    # LoRA B = 0 at init: every lora_A gradient is zero; they add 0 to every score and are left out with a warning
    # naming them (the lora_B matrices are scored); an adapter whose every gradient is zero is refused (test_hi19_fixes)
    with pytest.warns(UserWarning, match=r"2 of the 4 tracked matrices get a zero gradient.*lora_A.*lora_B is still"):
        est = InfluenceEstimator(fresh).fit(train)
    assert est.skipped_layers == [m.name for m in est.tracked if m.kind == "lora_A"]


@pytest.mark.gpu
def test_cuda_matches_cpu(causal_lm, lm_data):
    train, val = lm_data
    cpu = InfluenceEstimator(causal_lm, "hyperinf").fit(train).scores(val)
    causal_lm.to("cuda")
    try:
        est = InfluenceEstimator(causal_lm, "hyperinf").fit(train)
        assert est.device.type == "cuda"
        gpu = est.scores(val)
    finally:
        causal_lm.to("cpu")
    assert spearmanr(cpu, gpu).statistic >= 0.99


def test_saved_adapter_loaded_for_inference(causal_lm, lm_data, small_tokenizer, tmp_path):
    """A reloaded adapter (LoRA weights frozen, `is_trainable=False`) is attributed the same way."""
    from peft import PeftModel

    train, val = lm_data
    causal_lm.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)  # same base weights as the fixture
    base = LlamaForCausalLM(tiny_llama_config(len(small_tokenizer)))
    reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter")
    assert not any(p.requires_grad for p in reloaded.parameters())
    expected = InfluenceEstimator(causal_lm, "hyperinf").fit(train).scores(val)
    got = InfluenceEstimator(reloaded, "hyperinf").fit(train).scores(val)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_input_require_grads_hook_is_taken_out_for_vmap_and_restored(causal_lm, lm_data, monkeypatch):
    """Audit defect 1: `Trainer(gradient_checkpointing=True)` (and `peft.prepare_model_for_kbit_training`) call
    `enable_input_require_grads`, whose embedding hook calls `requires_grad_()`; `vmap` refused it, so `fit` crashed with
    the defaults. The hook is taken out during the vmapped calls only and put back exactly, also on error."""
    import copy

    train, val = lm_data
    train = train.select(range(16))
    expected = InfluenceEstimator(causal_lm, "hyperinf").fit(train).scores(val)
    model = copy.deepcopy(causal_lm)
    base = model.get_base_model()
    # as after `peft.prepare_model_for_kbit_training` and `Trainer(gradient_checkpointing=True)`: each call registers a
    # hook, the second one drops the handle of the first
    base.enable_input_require_grads()
    base.activation_checkpointing_enable()
    embeddings = model.get_input_embeddings()
    hooks_before = list(embeddings._forward_hooks.items())
    assert len(hooks_before) == 2 and base._require_grads_hook.id in embeddings._forward_hooks
    got = InfluenceEstimator(model, "hyperinf").fit(train).scores(val)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())
    assert list(embeddings._forward_hooks.items()) == hooks_before
    assert embeddings(torch.tensor([[1, 2]])).requires_grad  # the hook still works (frozen embedding weights)

    def failing_loss(params, example):
        raise RuntimeError("boom")

    est = InfluenceEstimator(model, "tracin")
    monkeypatch.setattr(est.gradients, "_loss", failing_loss)
    with pytest.raises(RuntimeError, match="boom"):
        est.fit(train)
    assert list(embeddings._forward_hooks.items()) == hooks_before
    assert base.config._attn_implementation == "sdpa"


def test_adapter_name_must_be_active(small_tokenizer, lm_data):
    """Audit defect 2: with `adapter_name` not active, the forward ignored the tracked matrices: TracIn returned all-zero
    scores and the other methods failed after a full gradient pass, blaming an untrained adapter."""
    torch.manual_seed(0)
    model = get_peft_model(
        LlamaForCausalLM(tiny_llama_config(len(small_tokenizer))),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]),
        adapter_name="first",
    )
    model.add_adapter("second", LoraConfig(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj"]))
    randomize_lora_b(model)
    model.set_adapter("first")
    message = r"`adapter_name`='second' is not an active.*\['first'\].*model.set_adapter\('second'\)"
    for method in ("tracin", "hyperinf"):
        with pytest.raises(ValueError, match=message):
            InfluenceEstimator(model, method, adapter_name="second")
    assert all(".first." in m.name for m in InfluenceEstimator(model, "tracin").tracked)  # default: the active one
    model.set_adapter("second")
    train, val = lm_data
    est = InfluenceEstimator(model, "tracin", adapter_name="second")
    assert all(".second." in m.name for m in est.tracked)
    assert np.abs(est.fit(train.select(range(8))).scores(val)).max() > 0


def test_left_padded_example_in_float64_has_finite_vmap_gradients(causal_lm):
    """Audit defect 6: the whole pass ran in eager attention under the default `vmap`, so a padded example (which takes
    the per-example backward path) got NaN gradients in float64; only the vmapped calls use eager attention now."""
    import copy

    from hf_ext.hyperinf import PerExampleGradients

    model = copy.deepcopy(causal_lm).double()
    example = {"input_ids": [0, 0, 0, 5, 6, 7, 8, 9], "attention_mask": [0, 0, 0, 1, 1, 1, 1, 1]}
    example["labels"] = [-100, -100, -100, 5, 6, 7, 8, 9]
    tracked = tracked_lora_parameters(model)
    grads = {}
    for method in ("vmap", "loop"):
        per_example = PerExampleGradients(model, tracked, batch_size=1, method=method, dtype=torch.float64)
        grads[method] = next(per_example.iterate([example]))
    for name, value in grads["vmap"].items():
        assert torch.isfinite(value).all() and value.abs().max() > 0
        torch.testing.assert_close(value, grads["loop"][name])
    assert model.get_base_model().config._attn_implementation == "sdpa"


@pytest.mark.parametrize("method", ["tracin", "hyperinf"])
def test_non_finite_gradients_are_named_not_turned_into_nan_scores(causal_lm, lm_data, method):
    """A NaN adapter weight (a diverged fine-tune): every method refuses with the cause; tracin returned NaN scores
    silently and the others blamed the damping ("an untrained adapter?")."""
    train, val = lm_data
    weight = next(p for n, p in causal_lm.named_parameters() if "lora_A" in n)
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0, 0] = float("nan")
        with pytest.raises(ValueError, match="hold NaN or inf"):
            InfluenceEstimator(causal_lm, method).fit(train.select(range(4))).scores(val)
    finally:
        with torch.no_grad():
            weight.copy_(saved)
