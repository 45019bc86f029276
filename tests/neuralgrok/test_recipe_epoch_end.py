"""The end of a training epoch on several ranks, and `--dataloader_drop_last` (audit rc13 #4).

On 2 ranks accelerate's `even_batches` fills each epoch's last batch with rows from the start of the epoch's order,
so a data-parallel run equals one process at the same global batch only until the first epoch ends (p=11: step 4
trained on 16 rows instead of 7). The recipe keeps the reference's partial last batch by default and says so on a
multi-process launch; `--dataloader_drop_last true` drops it in both, and then 2 ranks equal one process throughout.
That flag used to drop the last partial *evaluation* batch too: with the test split smaller than one eval batch there
was no evaluation at all (no test curve, no steps to target), otherwise a test accuracy over a subset.
"""

from __future__ import annotations

import pytest

from hf_ext.recipes.neuralgrok import epoch_end_note, main

_TINY = ["--p", "11", "--hidden_size", "32", "--disable_tqdm", "true", "--report_to", "none", "--seeds", "0",
         "--logging_steps", "1", "--use_cpu", "true", "--target_accuracy", "0.99"]  # fmt: skip
_EVAL = ["--eval_strategy", "steps", "--eval_steps", "2"]


def test_epoch_end_note_says_what_the_ranks_train_on():
    assert "last 7 rows plus 9 rows repeated" in epoch_end_note(55, 8, 2, False)
    assert "last 48 rows plus 464 rows repeated" in epoch_end_note(4656, 256, 2, False)  # the defaults on 2 ranks
    assert "--dataloader_drop_last true" in epoch_end_note(55, 8, 2, False)
    assert epoch_end_note(55, 16, 1, False) is None  # one process
    assert epoch_end_note(55, 8, 2, True) is None
    assert epoch_end_note(64, 8, 2, False) is None  # whole batches: no partial one


def test_drop_last_drops_the_last_training_batch_but_evaluates_every_row(tmp_path):
    from hf_ext.neuralgrok import (
        NeuralGrokConfig,
        NeuralGrokTrainer,
        build_arithmetic_dataset,
        split_arithmetic_dataset,
    )
    from hf_ext.recipes.neuralgrok import GrokModelArguments, build_model

    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.0)
    assert (len(splits["train"]), len(splits["test"])) == (55, 55)
    args = NeuralGrokConfig(output_dir=str(tmp_path), gradient_transform="none", per_device_train_batch_size=16,
                            per_device_eval_batch_size=32, dataloader_drop_last=True, use_cpu=True,
                            report_to="none")  # fmt: skip
    model = build_model(GrokModelArguments(hidden_size=32), 13, len(splits["train"][0]["input_ids"]))
    trainer = NeuralGrokTrainer(model=model, args=args, train_dataset=splits["train"], eval_dataset=splits["test"])
    assert [len(b["input_ids"]) for b in trainer.get_train_dataloader()] == [16, 16, 16]  # 7 rows dropped
    assert [len(b["input_ids"]) for b in trainer.get_eval_dataloader()] == [32, 23]  # was [32]
    assert [len(b["input_ids"]) for b in trainer.get_test_dataloader(splits["test"])] == [32, 23]
    assert args.dataloader_drop_last is True


def test_drop_last_with_a_training_split_smaller_than_a_batch_is_refused(tmp_path):
    """The default batch (512) on the 55 rows of p=11 trained 0 steps and reported a run without any result."""
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--dataloader_drop_last true .* --methods none trains on 55 rows, fewer "
                       r"than one batch \(--per_device_train_batch_size 512 x 1 process\(es\) = 512\)"):  # fmt: skip
        main([*_TINY, "--methods", "none", "--max_steps", "2", "--dataloader_drop_last", "true",
              "--output_dir", str(out)])  # fmt: skip
    assert not out.exists()


def _curves(results, method):
    return results["methods"][method]["runs"][0]["curves"]


# the 2-rank runs (test_two_ranks_equal_one_process_across_epochs_with_drop_last,
# test_two_ranks_by_default_keep_the_partial_batch_and_say_how_they_differ) are in test_scale_out.py: one launch runs
# every 2-rank check of NeuralGrok
