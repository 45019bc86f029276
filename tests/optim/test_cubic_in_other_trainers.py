"""CubicNewton handed to a Trainer that is not `CubicNewtonTrainer` (a stock or another hf_ext Trainer): the errors name
the trainer that works. `optimizers=(CubicNewton(...), None)` failed with "needs a closure ... (or call
set_closure() first)", `optimizer_cls_and_kwargs` with a refusal of `add_param_group`, which the user never called."""

import pytest
from transformers import Trainer, TrainingArguments

from hf_ext.optim import CubicNewton

from .test_cubic_trainer import _data, _model


def _args(out):
    return TrainingArguments(str(out), per_device_train_batch_size=4, max_steps=2, use_cpu=True, report_to="none",
                             save_strategy="no", disable_tqdm=True)  # fmt: skip


def test_an_instance_in_a_stock_trainer_names_cubic_newton_trainer(tmp_path):
    model = _model()
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=_data(),
                      optimizers=(CubicNewton(model.parameters(), M=5.0), None))  # fmt: skip
    with pytest.raises(ValueError, match=r"needs a closure.*train with hf_ext\.optim\.CubicNewtonTrainer"):
        trainer.train()


def test_the_class_in_a_stock_trainer_names_cubic_newton_trainer(tmp_path):
    trainer = Trainer(model=_model(), args=_args(tmp_path), train_dataset=_data(),
                      optimizer_cls_and_kwargs=(CubicNewton, {"M": 5.0}))  # fmt: skip
    with pytest.raises(ValueError, match=r"single parameter group.*hf_ext\.optim\.CubicNewtonTrainer"):
        trainer.train()


def test_the_class_in_a_stock_trainer_with_weight_decay_names_cubic_newton_trainer(tmp_path):
    """The first (weight-decay) group is refused before the second: its message names the trainer too (cn33 F1)."""
    args = _args(tmp_path)
    args.weight_decay = 0.01
    trainer = Trainer(model=_model(), args=args, train_dataset=_data(),
                      optimizer_cls_and_kwargs=(CubicNewton, {"M": 5.0}))  # fmt: skip
    with pytest.raises(ValueError, match=r"weight_decay=0\.01.*hf_ext\.optim\.CubicNewtonTrainer"):
        trainer.train()
