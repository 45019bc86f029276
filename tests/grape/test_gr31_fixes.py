"""gr31 fixes: an output name that is an existing folder of output_dir (F1; names that look like folders, `weights/`,
`.`, `a/..`, are refused by GrapeConfig: tests/grape/test_rv31_fixes.py)."""

from __future__ import annotations

import pytest
from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


def test_an_output_name_of_an_existing_folder_is_refused_by_the_trainer(tmp_path):
    # replacing a folder failed with IsADirectoryError at the end of training (the mixture export runs inside
    # train(), before the model is saved)
    (tmp_path / "checkpoint-1").mkdir()
    train, targets = synthetic_mixture()
    args = quick_grape_args(tmp_path, export_mixture_file="checkpoint-1")
    with pytest.raises(ValueError, match="export_mixture_file='checkpoint-1' is a folder in output_dir"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
