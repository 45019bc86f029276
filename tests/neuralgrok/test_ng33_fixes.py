"""Audit ng33 fixes."""

import os
import shutil

import pytest

from hf_ext.recipes.neuralgrok import main

_FLAGS = [
    "--p", "11", "--max_steps", "4", "--use_cpu", "--disable_tqdm", "True", "--seeds", "0", "--hidden_size", "16",
    "--num_attention_heads", "2", "--num_hidden_layers", "1", "--outer_fraction", "0.2", "--outer_every", "2",
    "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--logging_steps", "2", "--save_strategy", "steps",
    "--save_steps", "2", "--amplifier_hidden_dims", "4",
]  # fmt: skip


def test_recipe_refuses_a_resume_with_another_outer_gradient_before_any_run_trains(tmp_path):
    # (ng33 F1) --outer_gradient was not among the options every checkpoint is checked against before any work: the
    # `none` run resumed and trained to its end, then the neuralgrok run's train() refused the checkpoint with a
    # message naming neither the flag nor the checkpoint
    out = str(tmp_path / "out")
    flags = [*_FLAGS, "--methods", "none,neuralgrok", "--output_dir", out]
    main(flags, plots=False)
    for method in ("none", "neuralgrok"):  # interrupted after step 2
        shutil.rmtree(os.path.join(out, f"{method}-seed0", "checkpoint-4"))
    with pytest.raises(ValueError, match="--outer_gradient recompute, but this command gives next_step"):
        main([*flags, "--outer_gradient", "next_step", "--resume_from_checkpoint"], plots=False)
    assert sorted(os.listdir(os.path.join(out, "none-seed0"))) == ["checkpoint-2", "neuralgrok_run.json"]
    # the same --outer_gradient resumes both runs
    main([*flags, "--resume_from_checkpoint"], plots=False)
    assert os.path.isdir(os.path.join(out, "neuralgrok-seed0", "checkpoint-4"))


def test_save_model_writes_the_trained_amplifier_which_from_pretrained_reloads(tmp_path, tiny_amplified_trainer):
    # (ng33 F2) save_model() wrote the model only: the trained amplifier was lost unless a checkpoint was saved at the
    # last step, and NeuralAmplifier had no save_pretrained / from_pretrained
    import numpy as np
    import torch

    from hf_ext.neuralgrok import NeuralAmplifier

    amplifier = NeuralAmplifier((np.int64(4), 3), c=0.5, dropout=0.1)  # numpy widths: kept in the config
    trainer = tiny_amplified_trainer(
        tmp_path, amplifier, amplifier_hidden_dims=[4, 3], amplifier_c=0.5, meta_learning_rate=1e-2, save_strategy="no"
    )
    initial = {k: v.clone() for k, v in amplifier.state_dict().items()}
    trainer.train()
    trainer.save_model()
    back = NeuralAmplifier.from_pretrained(str(tmp_path / "out" / "neuralgrok_amplifier"))
    assert (back.hidden_dims, back.c, back.dropout) == ((4, 3), 0.5, 0.1)
    trained = trainer.amplifier.state_dict()
    assert not all(torch.equal(initial[k], trained[k]) for k in trained)  # it was trained
    assert all(torch.equal(v, trained[k]) for k, v in back.state_dict().items())
