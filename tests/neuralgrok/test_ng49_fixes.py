"""Pass 40 (ng49) fixes: NeuralGrokTrainer's AdamW (`coupled_weight_decay=False`) groups weight decay by the model's
own `decay_parameter_names()` (FOG: trainable matrices only), as Fp8Trainer, MetadataTrainer, GrapeTrainer and
PrivateTrainer do; it used transformers' name patterns, which decay FOG's xIELU scalars (`act_fn.alpha_p`,
`act_fn.alpha_n`). A checkpoint written with the old groups resumes with them, exactly."""

from __future__ import annotations

import pytest
import torch

from hf_ext.neuralgrok import NeuralGrokConfig, NeuralGrokTrainer

from ..fog_decay_helpers import decay_groups, tiny_fog, token_dataset


def make_args(folder, max_steps: int = 1, transform: str = "normalize", **kwargs) -> NeuralGrokConfig:
    return NeuralGrokConfig(
        output_dir=str(folder),
        gradient_transform=transform,
        coupled_weight_decay=False,  # args.optim (AdamW), grouped by Trainer.create_optimizer
        weight_decay=0.1,
        learning_rate=1e-2,
        lr_scheduler_type="constant",
        max_steps=max_steps,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        track_train_accuracy=False,
        **kwargs,
    )


def test_adamw_decays_what_fog_names(tmp_path):
    model = tiny_fog()
    groups = decay_groups(NeuralGrokTrainer(model=model, args=make_args(tmp_path), train_dataset=token_dataset()))
    assert groups[0.1] == set(model.decay_parameter_names())
    alphas = {n for n, _ in model.named_parameters() if n.endswith(("act_fn.alpha_p", "act_fn.alpha_n"))}
    assert len(alphas) == 4 and alphas <= groups[0.0]  # the old code decayed all four
    # the reference optimizer (torch Adam, coupled L2) still decays every parameter, in one group
    args = make_args(tmp_path / "coupled")
    args.coupled_weight_decay = True
    coupled = decay_groups(NeuralGrokTrainer(model=model, args=args, train_dataset=token_dataset()))
    assert coupled == {0.1: {n for n, p in model.named_parameters() if p.requires_grad}}


@pytest.mark.parametrize("transform", ["normalize", "grokfast_ema"])  # grokfast: its buffers follow the groups' order
def test_a_checkpoint_grouped_by_name_patterns_resumes_exactly_with_its_groups(tmp_path, caplog, transform):
    from transformers import Trainer

    class Old(NeuralGrokTrainer):  # the grouping before this fix
        def get_decay_parameter_names(self, model):
            return Trainer.get_decay_parameter_names(self, model)

    uninterrupted = Old(model=tiny_fog(), args=make_args(tmp_path / "a", 4, transform), train_dataset=token_dataset())
    uninterrupted.train()
    Old(model=tiny_fog(), args=make_args(tmp_path / "b", 2, transform), train_dataset=token_dataset()).train()
    resumed = NeuralGrokTrainer(
        model=tiny_fog(), args=make_args(tmp_path / "b", 4, transform), train_dataset=token_dataset()
    )
    with caplog.at_level("WARNING"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-2"))
    assert "keeps those groups" in caplog.text
    want = uninterrupted.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in resumed.model.state_dict().items())
    alphas = [p for n, p in resumed.model.named_parameters() if "alpha_" in n]
    decayed = resumed.optimizer.param_groups[0]["params"]
    assert len(alphas) == 4 and all(any(p is q for q in decayed) for p in alphas)  # the old run's groups
