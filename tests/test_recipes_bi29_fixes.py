"""bi29 audit: model / tokenizer / data flags refused by name before any work.

F1: a tokenizer with more tokens than the loaded model embeds failed inside training with a bare IndexError (pretrain,
federated) after the earlier run's results were removed. F2: a --model_name_or_path folder without a tokenizer failed
with transformers' "Couldn't instantiate the backend tokenizer", naming no flag. F3: --dataset_name "" failed inside
`datasets` with a bare IndexError; the other empty path flags were silently read as not given.
"""

import importlib

import pytest


@pytest.fixture(autouse=True)
def _no_work(monkeypatch):
    """Every refusal here comes before the earlier run's results are cleared, the first step of a run's work: reaching
    it fails the test at once (instead of training with the bad flag)."""
    import hf_ext.recipes._common as common

    def reached(*args, **kwargs):
        raise AssertionError("the run started its work (clear_previous_results) instead of refusing the flag")

    monkeypatch.setattr(common, "clear_previous_results", reached)


def _main(recipe: str):
    return importlib.import_module(f"hf_ext.recipes.{recipe}").main


def _model_folder(path, vocab_size: int, tokenizer=None) -> str:
    from transformers import LlamaConfig

    LlamaConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=256,
    ).save_pretrained(str(path))  # fmt: skip
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return str(path)


@pytest.mark.parametrize("recipe", ["pretrain", "metadata_pretrain", "grape", "layer_parallel", "federated"])
def test_model_folder_without_tokenizer_refused_by_name(tmp_path, recipe):
    folder = _model_folder(tmp_path / "model", 512)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"--model_name_or_path=.* holds no tokenizer"):
        _main(recipe)(["--model_name_or_path", folder, "--output_dir", str(out), "--report_to", "none"])


@pytest.mark.parametrize("recipe", ["pretrain", "grape", "federated"])
def test_tokenizer_larger_than_model_embedding_refused_before_results_are_cleared(tmp_path, small_tokenizer, recipe):
    folder = _model_folder(tmp_path / "model", 300, small_tokenizer)  # 512 tokens, 300 embedded
    out = tmp_path / "out"
    out.mkdir()
    earlier = {"pretrain": "pretrain_results.json", "grape": "grape_results.json", "federated": "results.json"}[recipe]
    (out / earlier).write_text("{}")
    with pytest.raises(ValueError, match=r"has 512 tokens, but the model --model_name_or_path .* embeds 300"):
        _main(recipe)(["--model_name_or_path", folder, "--output_dir", str(out), "--report_to", "none"])
    assert (out / earlier).read_text() == "{}"


def test_layer_parallel_tokenizer_larger_than_model_embedding_refused(tmp_path, small_tokenizer):
    folder = _model_folder(tmp_path / "model", 300, small_tokenizer)
    with pytest.raises(ValueError, match=r"the tokenizer saved in --model_name_or_path .* has 512 tokens"):
        _main("layer_parallel")(["--model_name_or_path", folder, "--output_dir", str(tmp_path / "o")])


@pytest.mark.parametrize(
    "recipe, flag",
    [
        ("pretrain", "--dataset_name"), ("metadata_pretrain", "--dataset_name"), ("layer_parallel", "--dataset_name"),
        ("pretrain", "--model_name_or_path"), ("hyperinf", "--model_name_or_path"), ("grape", "--train_file"),
        ("compliance", "--tokenizer_name"), ("federated", "--tokenizer_name"),
    ],
)  # fmt: skip
def test_empty_path_flag_refused_by_name(tmp_path, recipe, flag):
    report = [] if recipe == "compliance" else ["--report_to", "none"]  # compliance has no training arguments
    with pytest.raises(ValueError, match=rf"{flag} is an empty string"):
        _main(recipe)([flag, "", "--output_dir", str(tmp_path / "out"), *report])
