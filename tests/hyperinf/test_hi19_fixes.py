"""Audit hi19: the influence engine and the recipe.

F1. A tracked matrix whose gradient is zero for every training example (a LoRA on a module whose output does not
    reach the loss, e.g. LLaVA's last vision layer with `vision_feature_layer=-2`) made every method but TracIn refuse
    the whole model ("an untrained adapter?"). It adds exactly 0 to every score: it is left out with a warning.
F2. `InfluenceEngine` ("fed by any iterator of gradient batches") failed on a list or an iterator with "'list' object
    is not callable"; a one-shot source passed `fit`, then `scores` ended in a bare `torch.cat` error; a later pass
    yielding another number of training examples than `fit` counted was not noticed.
F3. The recipe with a BERT-family --model_name_or_path (tokenizer without an eos token) ended every example in None
    and failed in the Trainer's collator ("Could not infer dtype of NoneType") after the earlier run's report files
    had been removed (`build_instruction_task` did the same for --task llm_selection).
F4. method="exact" with a half `dtype` passed validation, then failed with a raw Cholesky NotImplementedError after
    the whole gradient pass.
"""

import warnings

import numpy as np
import pytest
import torch

from hf_ext.hyperinf import InfluenceConfig, InfluenceEngine, InfluenceEstimator, influence_from_gradients

# F1 -------------------------------------------------------------------------------------------------------------------

_CURVATURE_METHODS = [
    ("hyperinf", {}),
    ("exact", {"exact_curvature": "gfim"}),
    ("exact", {"exact_curvature": "fim"}),
    ("datainf", {}),
    ("lissa", {}),
    ("tracin", {}),
]


def _gradients(n, seed, dead=True):
    gen = torch.Generator().manual_seed(seed)
    grads = {"a": torch.randn(n, 2, 5, generator=gen, dtype=torch.float64),
             "b": 0.3 * torch.randn(n, 3, 4, generator=gen, dtype=torch.float64)}  # fmt: skip
    if dead:
        grads["dead"] = torch.zeros(n, 2, 6, dtype=torch.float64)
    return grads


def _brute_force(train, val, method, exact_curvature="gfim", damping_scale=0.1):
    """float64, explicit inverses, per layer of `train` (the dead layer not among them)."""
    n = next(iter(train.values())).shape[0]
    total = torch.zeros(n, dtype=torch.float64)
    for name, g in train.items():
        v = val[name].mean(dim=0)
        lam = damping_scale * g.square().mean(dim=(1, 2)).mean()
        if method == "tracin":
            hvp = v
        elif method == "datainf":
            flat, vf = g.flatten(1), v.flatten()
            terms = [vf - (gk @ vf) / (lam + gk @ gk) * gk for gk in flat]
            hvp = (torch.stack(terms).mean(dim=0) / lam).reshape(v.shape)
        elif method == "exact" and exact_curvature == "fim":
            flat = g.flatten(1)
            fim = flat.T @ flat / n + lam * torch.eye(flat.shape[1], dtype=torch.float64)
            hvp = (torch.linalg.inv(fim) @ v.flatten()).reshape(v.shape)
        else:  # hyperinf and exact on the GFIM
            gfim = torch.einsum("kri,krj->ij", g, g) / n + lam * torch.eye(g.shape[2], dtype=torch.float64)
            hvp = v @ torch.linalg.inv(gfim)
        total -= torch.einsum("krd,rd->k", g, hvp)
    return total


@pytest.mark.parametrize("method, options", _CURVATURE_METHODS)
def test_a_layer_with_zero_gradients_is_left_out_and_the_scores_are_those_without_it(method, options):
    train, val = _gradients(12, 0), _gradients(3, 1)
    val["dead"] = torch.randn(3, 2, 6, dtype=torch.float64)  # its validation gradient does not matter either
    shapes = {name: tuple(t.shape[1:]) for name, t in train.items()}
    engine = InfluenceEngine(InfluenceConfig(method=method, dtype=torch.float64, **options), shapes)
    with pytest.warns(UserWarning, match=r"1 of the 3 tracked matrices get a zero gradient.*left out.*: 'dead'\."):
        engine.fit(lambda: iter([{k: t[:5] for k, t in train.items()}, {k: t[5:] for k, t in train.items()}]))
    got = engine.scores(lambda: iter([val]))
    assert engine.skipped_layers == ["dead"] and engine.active == ["a", "b"]
    assert engine.layers["dead"].info == {"skipped": True} and engine.layers["dead"].solver is None
    live = {k: t for k, t in train.items() if k != "dead"}
    live_val = {k: t for k, t in val.items() if k != "dead"}
    if method != "tracin":  # the per-layer damping rule of the other layers is unchanged
        for name, g in live.items():
            want = 0.1 * float(g.square().mean(dim=(1, 2)).mean())
            assert engine.layers[name].info["damping"] == pytest.approx(want, rel=1e-12)
    without = influence_from_gradients(live, live_val, method, dtype=torch.float64, **options)
    torch.testing.assert_close(got, without, rtol=1e-12, atol=1e-12 * float(without.abs().max()))
    if method != "lissa":  # LiSSA is a truncated series; it equals the engine without the layer (above)
        want = _brute_force(live, live_val, method, options.get("exact_curvature", "gfim"))
        tol = 1e-6 if method == "hyperinf" else 1e-10  # Schulz stops at its tolerance (1e-6)
        torch.testing.assert_close(got, want, rtol=tol, atol=tol * float(want.abs().max()))


@pytest.mark.parametrize("method", ["hyperinf", "datainf", "exact", "lissa", "tracin"])
def test_every_layer_zero_is_refused(method):
    train = {name: torch.zeros(4, 2, 3) for name in ("a", "b")}
    with pytest.raises(ValueError, match=r"every tracked matrix \(2\) are zero for every training example"):
        influence_from_gradients(train, {name: torch.randn(1, 2, 3) for name in train}, method)


def test_gradients_that_underflow_are_not_called_zero():
    """Non-zero gradients whose squares underflow in float32 give a zero damping: refused naming the dtype."""
    train = {"a": torch.full((4, 2, 3), 1e-30), "b": torch.randn(4, 2, 3)}
    with pytest.raises(ValueError, match=r"layer 'a' got 0\.0.*underflow in dtype=torch\.float32.*float64"):
        influence_from_gradients(train, {name: torch.randn(1, 2, 3) for name in train}, "datainf")


def _llava_feature_layer_minus_two():
    """LLaVA with its default vision_feature_layer=-2: the last CLIP layer's output is never used, and
    target_modules q_proj/v_proj also adapt it."""
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=16, patch_size=8)  # fmt: skip
    text = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=2, pad_token_id=0, max_position_embeddings=64)  # fmt: skip
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=63, image_seq_length=4)
    assert config.vision_feature_layer == -2
    model = get_peft_model(LlavaForConditionalGeneration(config).double(),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # a trained adapter (the dead layer's B would stay 0; it does not matter)
                param.copy_(0.2 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
    rows = []
    for _ in range(9):
        words = torch.randint(2, 60, (5,), generator=gen).tolist()
        rows.append({"input_ids": [63] * 4 + words, "labels": [-100] * 4 + words,
                     "pixel_values": torch.randn(3, 16, 16, generator=gen).tolist()})  # fmt: skip
    return model, rows[:7], rows[7:]


def _backward_gradients(model, examples):
    """One float64 backward per example; a matrix off the loss path gets no `.grad` (zero)."""
    from hf_ext.hyperinf import tracked_lora_parameters

    tracked, params = tracked_lora_parameters(model), dict(model.named_parameters())
    out = {m.name: [] for m in tracked}
    for example in examples:
        model.zero_grad(set_to_none=True)
        model(**{key: torch.tensor([value]) for key, value in example.items()}).loss.backward()
        for m in tracked:
            grad = params[m.name].grad
            grad = torch.zeros_like(params[m.name]) if grad is None else grad.detach()
            out[m.name].append((grad.T if m.kind == "lora_B" else grad).reshape(m.shape))
    model.zero_grad(set_to_none=True)
    return {name: torch.stack(values) for name, values in out.items()}


def test_llava_with_an_unused_vision_layer_is_scored_by_every_method():
    model, train, val = _llava_feature_layer_minus_two()
    model.eval()
    ref_train, ref_val = _backward_gradients(model, train), _backward_gradients(model, val)
    dead = sorted(name for name, g in ref_train.items() if not g.any())
    assert dead and all("vision_tower.encoder.layers.1." in name for name in dead)
    assert len(dead) == 4  # lora_A and lora_B of q_proj and v_proj
    live = {name: g for name, g in ref_train.items() if name not in dead}
    live_val = {name: g for name, g in ref_val.items() if name not in dead}
    for method in ("hyperinf", "datainf", "exact", "lissa"):
        est = InfluenceEstimator(model, method, per_example_gradients="loop", dtype=torch.float64)
        with pytest.warns(UserWarning, match=r"4 of the \d+ tracked matrices .*vision_tower\.encoder\.layers\.1\."):
            got = est.fit(train).scores(val)
        assert sorted(est.skipped_layers) == dead
        assert all(est.layer_info[name] == {"skipped": True} for name in dead)
        want = influence_from_gradients(live, live_val, method, dtype=torch.float64).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())
        if method == "hyperinf":
            from hf_ext.recipes.hyperinf import schulz_summary

            summary = schulz_summary(est.layer_info)  # the recipe's per-method record skips the left-out layers
            assert summary["schulz_max_iterations_used"] > 0 and summary["schulz_max_residual"] < 1e-6


# F2 -------------------------------------------------------------------------------------------------------------------


def _batches(n, seed, size=4):
    gen = torch.Generator().manual_seed(seed)
    grads = torch.randn(n, 2, 8, generator=gen, dtype=torch.float64)
    return [{"l": grads[i : i + size]} for i in range(0, n, size)], {"l": grads}


def _engine(method="datainf"):
    return InfluenceEngine(InfluenceConfig(method=method, dtype=torch.float64), {"l": (2, 8)})


@pytest.mark.parametrize("method", ["datainf", "hyperinf", "lissa"])
@pytest.mark.parametrize("container", [list, tuple])
def test_a_list_or_tuple_of_batches_is_a_source(method, container):
    train, train_all = _batches(12, 0)
    val, val_all = _batches(3, 1)
    got = _engine(method).fit(container(train)).scores(container(val))
    want = influence_from_gradients(train_all, val_all, method, dtype=torch.float64)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)


def test_an_iterator_is_refused_naming_the_contract():
    train, _ = _batches(12, 0)
    val, _ = _batches(3, 1)
    with pytest.raises(TypeError, match=r"`train_source` must be a gradient source: a zero-argument callable.*"
                                         r"list_iterator, an iterator that can be read once only"):
        _engine().fit(iter(train))
    with pytest.raises(TypeError, match=r"`train_source` .*generator, an iterator"):
        _engine().fit(batch for batch in train)
    engine = _engine().fit(train)
    with pytest.raises(TypeError, match=r"`eval_source` must be a gradient source.*list_iterator"):
        engine.scores(iter(val))
    with pytest.raises(TypeError, match=r"`train_source` must be a gradient source.*Got a dict"):
        _engine().fit(train[0])
    with pytest.raises(TypeError, match=r"`train_source` returned a int, not an iterable"):
        _engine().fit(lambda: 3)
    with pytest.raises(TypeError, match=r"A gradient batch must be a mapping.*got a Tensor"):
        _engine().fit([train[0]["l"]])


@pytest.mark.parametrize("method", ["tracin", "hyperinf", "datainf", "lissa", "exact"])
def test_a_one_shot_source_is_refused_in_scores(method):
    train, _ = _batches(12, 0)
    val, _ = _batches(3, 1)
    once = iter(train)
    engine = _engine(method).fit(lambda: once)  # fit reads it; every later pass finds it exhausted
    with pytest.raises(ValueError, match=r"yielded 0 examples in this pass but 12 in `fit`.*fresh iterator"):
        engine.scores(val)


@pytest.mark.parametrize("later", [8, 16])
@pytest.mark.parametrize("method", ["tracin", "datainf"])
def test_a_later_pass_with_another_number_of_examples_is_refused(method, later):
    first, _ = _batches(12, 0)
    other, _ = _batches(later, 2)
    calls = []

    def source():
        calls.append(1)
        return iter(first if len(calls) == 1 else other)

    engine = _engine(method).fit(source)
    match = ("at least 16" if later > 12 else "8") + r" examples in this pass but 12 in `fit`"
    with pytest.raises(ValueError, match=match):
        engine.scores(_batches(3, 1)[0])


# F4 -------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("curvature", ["gfim", "fim"])
def test_exact_with_a_half_dtype_is_refused_at_construction(dtype, curvature):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules=["q_proj"]))
    match = rf"method='exact' needs `dtype` torch\.float32 or torch\.float64, got {dtype}: .*Cholesky"
    with pytest.raises(ValueError, match=match):
        InfluenceConfig(method="exact", dtype=dtype, exact_curvature=curvature).validate()
    grads = {"l": torch.randn(6, 2, 4)}
    with pytest.raises(ValueError, match=match):
        influence_from_gradients(grads, grads, "exact", dtype=dtype, exact_curvature=curvature)
    with pytest.raises(ValueError, match=match):  # before any gradient pass
        InfluenceEstimator(model, "exact", dtype=dtype, exact_curvature=curvature)


@pytest.mark.parametrize("method", ["hyperinf", "datainf", "lissa", "tracin"])
def test_the_other_methods_still_take_a_half_dtype(method):
    grads = {"l": torch.randn(6, 2, 4)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hyperinf: Schulz stalls in half precision (schulz_dtype=None)
        scores = influence_from_gradients(grads, grads, method, dtype=torch.bfloat16, schulz_dtype=None)
    assert scores.dtype == torch.bfloat16 and torch.isfinite(scores).all()


# F3 -------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece():
    """A small WordPiece vocabulary (BERT-style special tokens) trained on the embedded corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from hf_ext.data import load_corpus

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(load_corpus("train")["text"][:2000], trainers.WordPieceTrainer(vocab_size=500,
                                                                                           special_tokens=specials))
    return tok


def _bert_base(folder, wordpiece, with_sep=True):
    """A tiny BERT checkpoint beside its tokenizer: a BertTokenizerFast (eos None, sep [SEP]) or, `with_sep=False`, a
    tokenizer with neither an eos nor a sep token."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast, PreTrainedTokenizerFast

    if with_sep:
        tokenizer = BertTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip
    else:
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=wordpiece, unk_token="[UNK]", pad_token="[PAD]")
    assert tokenizer.eos_token_id is None and (tokenizer.sep_token_id is None) != with_sep
    tokenizer.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, max_position_embeddings=64)  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(folder)
    return tokenizer


_BERT_RUN = ["--target_modules", "query,value", "--methods", "tracin,hyperinf", "--num_train_epochs", "1",
             "--max_train", "30", "--num_val", "6", "--num_test", "6", "--select_fraction", "1.0", "--max_length", "24",
             "--use_cpu", "true", "--report_to", "none", "--disable_tqdm", "true", "--num_threads", "1"]  # fmt: skip


def test_recipe_with_a_bert_base_frames_examples_cls_sep_and_runs(tmp_path, wordpiece):
    import json

    from hf_ext.recipes.hyperinf import DEFAULT_DOMAINS, TaskArguments, build_task, main

    base = tmp_path / "bert"
    tokenizer = _bert_base(base, wordpiece)
    task = TaskArguments(domains=DEFAULT_DOMAINS, max_length=24, num_val=6, num_test=6, max_train=30)
    train, val, test, _, _ = build_task(task, tokenizer, seed=0)
    for split in (train, val, test):
        for ids in split["input_ids"]:
            assert len(ids) == 24 and None not in ids
            assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    out = tmp_path / "out"
    out.mkdir()
    (out / "hyperinf_results.json").write_text('{"earlier": "run"}')
    results = main(["--model_name_or_path", str(base), *_BERT_RUN, "--output_dir", str(out)])
    assert set(results["methods"]) == {"tracin", "hyperinf"}
    written = json.loads((out / "hyperinf_results.json").read_text())
    assert written["methods"]["hyperinf"]["schulz_max_residual"] < 1e-6


@pytest.mark.parametrize("task", ["classification", "llm_selection"])
def test_recipe_refuses_a_tokenizer_without_eos_and_sep_before_touching_earlier_files(tmp_path, wordpiece, task):
    from hf_ext.recipes.hyperinf import main

    base = tmp_path / "base"
    _bert_base(base, wordpiece, with_sep=False)
    out = tmp_path / "out"
    out.mkdir()
    earlier = {name: f"{name} of an earlier run" for name in ("hyperinf_results.json", "hyperinf_run_data.json",
                                                               "llm_selection_results.json")}  # fmt: skip
    for name, text in earlier.items():
        (out / name).write_text(text)
    argv = ["--model_name_or_path", str(base), "--output_dir", str(out), "--task", task, "--use_cpu", "true",
            "--report_to", "none", "--target_modules", "query,value"]  # fmt: skip
    with pytest.raises(ValueError, match=r"neither an eos token nor a sep token.*eos_token_id and sep_token_id"):
        main(argv)
    assert {p.name: p.read_text() for p in out.iterdir()} == earlier


def test_a_base_checkpoint_that_cannot_be_loaded_leaves_earlier_files(tmp_path, wordpiece):
    """The given base is loaded and adapted before the earlier run's report files are removed."""
    from hf_ext.recipes.hyperinf import main

    base = tmp_path / "bert"
    _bert_base(base, wordpiece)
    (base / "model.safetensors").write_bytes(b"a truncated download")
    out = tmp_path / "out"
    out.mkdir()
    earlier = {name: f"{name} of an earlier run" for name in ("hyperinf_results.json", "hyperinf_run_data.json")}
    for name, text in earlier.items():
        (out / name).write_text(text)
    with pytest.raises(Exception, match="(?i)safetensors|header|deserializ"):
        main(["--model_name_or_path", str(base), *_BERT_RUN, "--output_dir", str(out)])
    assert {p.name: p.read_text() for p in out.iterdir()} == earlier


def test_instruction_task_ends_answers_with_sep_without_an_eos(wordpiece, tmp_path):
    from hf_ext.hyperinf.selection import build_instruction_task, end_token_id

    tokenizer = _bert_base(tmp_path / "bert", wordpiece)
    train, target, _, _ = build_instruction_task(tokenizer, seed=0, prompt_tokens=8, answer_tokens=4, num_target=4,
                                                 num_test=4, max_train=24)  # fmt: skip
    assert end_token_id(tokenizer) == tokenizer.sep_token_id
    for split in (train, target):
        for ids, labels in zip(split["input_ids"], split["labels"]):
            assert None not in ids and ids[-1] == labels[-1] == tokenizer.sep_token_id
    bare = _bert_base(tmp_path / "bare", wordpiece, with_sep=False)
    with pytest.raises(ValueError, match="neither an eos token nor a sep token"):
        build_instruction_task(bare, seed=0, prompt_tokens=8, answer_tokens=4, num_target=4, num_test=4)
