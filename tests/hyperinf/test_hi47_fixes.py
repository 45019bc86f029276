"""Audit pass 39 (hi47): the input-id range check sees the embedding through peft's modules_to_save and
trainable-token wrappers."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaForCausalLM

from hf_ext.hyperinf import InfluenceEstimator
from hf_ext.hyperinf.gradients import PerExampleGradients, tracked_lora_parameters

from .conftest import small_llama_config

VOCAB = 50


def _embedding_saved():
    torch.manual_seed(0)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], modules_to_save=["embed_tokens"])
    return get_peft_model(LlamaForCausalLM(small_llama_config()), config)


def _trainable_tokens():
    torch.manual_seed(0)
    model = LlamaForCausalLM(small_llama_config())
    model.resize_token_embeddings(VOCAB + 2, mean_resizing=False)  # two added tokens, trained as token rows
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], trainable_token_indices=[VOCAB, VOCAB + 1])
    return get_peft_model(model, config)


@pytest.mark.parametrize(
    "build, rows", [(_embedding_saved, VOCAB), (_trainable_tokens, VOCAB + 2)], ids=["modules_to_save", "tokens"]
)
def test_ids_outside_a_wrapped_embedding_are_refused_naming_the_example(build, rows):
    # the check read `get_input_embeddings()`, which is peft's ModulesToSaveWrapper / TrainableTokensWrapper here, not
    # an nn.Embedding: it was skipped and the forward failed with a bare "IndexError: index out of range in self"
    model = build()
    assert PerExampleGradients(model, tracked_lora_parameters(model)).embedding_rows == rows
    train = [{"input_ids": [3, 4, 5, 6]}, {"input_ids": [3, rows, 5]}]
    with pytest.raises(
        ValueError, match=rf"example 1 has input_ids {rows} \(at position 1\) outside the model's input"
    ):
        InfluenceEstimator(model, "tracin", per_example_gradients="loop").fit(train)


def test_ids_of_the_wrapped_embedding_are_still_accepted():
    # the added tokens' ids (the last rows of the resized embedding) are the model's own
    model = _trainable_tokens()
    train = [{"input_ids": [3, 4, VOCAB, 6]}, {"input_ids": [3, VOCAB + 1, 5]}]
    scores = InfluenceEstimator(model, "tracin", per_example_gradients="loop").fit(train).scores(train[:1])
    assert scores.shape == (2,) and bool(torch.isfinite(torch.as_tensor(scores)).all())


def _selection_row(name, fraction, size):
    metrics = {"loss": 1.0, "token_accuracy": 0.5}
    return {"name": name, "fraction": fraction, "size": size, "corrupted_kept": 0, "test": metrics, "target": metrics}


def test_llm_selection_table_and_plot_show_the_share_actually_kept(monkeypatch, tmp_path):
    # per-group rounding (at least one example of each instruction kind / domain group) kept 14 of 24 examples for
    # --select_fractions 0.25 in a tiny run; the table's "keep" said 25% and the plot put the point at x = 0.25 on an
    # axis labelled "share of the training set kept"
    from hf_ext.recipes import hyperinf as recipe

    rows = [("full", 1.0, 24), ("clean (oracle)", 19 / 24, 19), ("random", 0.5, 17), ("hyperinf", 0.5, 17)]
    rows += [("random", 0.25, 14), ("hyperinf", 0.25, 14)]
    results = {
        "config": {"num_train": 24, "corrupt_rate": 0.2},
        "selection": [_selection_row(*row) for row in rows],
    }
    table = recipe.llm_selection_table(results)
    assert "| hyperinf | 58% (asked 25%) | 14 |" in table
    assert "| hyperinf | 71% (asked 50%) | 17 |" in table
    assert "| full | 100% | 24 |" in table and "| clean (oracle) | 79% | 19 |" in table
    figures = []
    monkeypatch.setattr(recipe, "atomic_savefig", lambda fig, path, **kwargs: figures.append(fig))
    recipe.plot_llm_selection(results, str(tmp_path / "llm_selection.png"))
    line = next(line for line in figures[0].axes[0].get_lines() if line.get_label() == "hyperinf")
    assert list(line.get_xdata()) == pytest.approx([14 / 24, 17 / 24])


def test_llm_selection_table_keeps_the_asked_share_when_rounding_is_small():
    from hf_ext.recipes import hyperinf as recipe

    results = {"config": {"num_train": 320}, "selection": [_selection_row("random", 0.5, 158)]}
    assert "| random | 50% | 158 |" in recipe.llm_selection_table(results)
