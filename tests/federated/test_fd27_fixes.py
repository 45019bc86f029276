"""Refusals that name the right thing: a LoRA entry that merge_then_average cannot merge names the client by its
`client_names` entry (it said `client_states[i]` even when names were given, e.g. Flower's partition ids), and a
non-finite update refused by `clip_update` names its tensor (fd27)."""

import math

import pytest
import torch

from hf_ext.federated.aggregation import aggregate_round, check_mergeable_lora_state, clip_update


def _state(extra: dict) -> dict:
    torch.manual_seed(0)
    return {
        "m.lora_A.weight": torch.randn(2, 5),
        "m.lora_B.weight": torch.zeros(4, 2),
        "m.base_layer.weight": torch.randn(4, 5),
    } | extra


def test_unmergeable_lora_entry_names_the_client_by_its_given_name():
    plain = _state({})
    dora = _state({"m.lora_magnitude_vector": torch.ones(4)})
    names = ["the client of partition-id 4", "the client of partition-id 9"]
    with pytest.raises(ValueError, match=r"^the client of partition-id 9 sent 'm.lora_magnitude_vector'.*DoRA") as e:
        aggregate_round(plain, [plain, dora], [1, 1], "merge_then_average", 2.0, client_names=names)
    assert "client_states[" not in str(e.value)
    with pytest.raises(ValueError, match=r"^`client_states\[1\]` sent 'm.lora_magnitude_vector'"):
        aggregate_round(plain, [plain, dora], [1, 1], "merge_then_average", 2.0)
    with pytest.raises(ValueError, match=r"^`state` sent 'm.lora_magnitude_vector'"):
        check_mergeable_lora_state(dora, "state")
    aggregate_round(plain, [plain, plain], [1, 1], "merge_then_average", 2.0, client_names=names)  # accepted


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_clip_update_names_the_non_finite_tensor(bad):
    update = {"a.weight": torch.ones(3), "b.weight": torch.ones(2), "steps": torch.tensor(3)}
    update["b.weight"][1] = bad
    with pytest.raises(ValueError, match=r"non-finite L2 norm .*'b.weight' holds NaN or inf"):
        clip_update(update, 1.0)
    update["b.weight"][1] = 1e30  # finite and huge: clipped, not refused
    out = clip_update(update, 1.0)
    assert math.isclose(float(torch.cat([out["a.weight"], out["b.weight"]]).double().norm()), 1.0, rel_tol=1e-6)


def test_overflow_refusal_names_the_function_argument_and_the_recipe_flag():
    """The non-finite aggregate refusal told direct callers of `aggregate_round` to set `client_dp_clip_norm`, which
    is FederatedArguments' field, not the function's `client_clip_norm` (rv27 note)."""
    from hf_ext.federated.aggregation import NonFiniteStateError

    g = _state({})
    huge = {**g, "m.lora_A.weight": torch.full((2, 5), 1e20), "m.lora_B.weight": torch.full((4, 2), 1e20)}
    with pytest.raises(NonFiniteStateError, match=r"\(`client_clip_norm`; FederatedArguments' `client_dp_clip_norm`"):
        aggregate_round(g, [huge, huge], [1, 3], "merge_then_average", 2.0)


def test_dp_sgd_with_an_fp16_loss_scaler_is_refused_at_construction(tmp_path, monkeypatch):
    """fa27 note: with --fp16 on a GPU accelerate trains with a GradScaler, which DP-SGD's own per-sample gradients
    bypass (no scaled backward): the first optimizer step failed with torch's 'Attempted step but _scale is None'.
    On CPU accelerate sets up no scaler, so the GPU's is put in place here."""
    from transformers import Trainer

    from hf_ext.federated.trainer import PrivateTrainer

    from .conftest import tiny_llama
    from .test_trainer_paths import _args, _data

    create = Trainer.create_accelerator_and_postprocess

    def with_scaler(self):
        create(self)
        self.accelerator.scaler = torch.amp.GradScaler("cpu")

    monkeypatch.setattr(Trainer, "create_accelerator_and_postprocess", with_scaler)
    with pytest.raises(ValueError, match=r"--fp16 on this device trains with a loss scaler.*--bf16 true"):
        PrivateTrainer(model=tiny_llama(64), args=_args(tmp_path, max_steps=2), train_dataset=_data())
    # without DP-SGD the Trainer's own backward scales the loss: not refused
    PrivateTrainer(
        model=tiny_llama(64),
        args=_args(tmp_path, max_steps=2, dp_clip_norm=None, dp_noise_multiplier=0.0),
        train_dataset=_data(),
    )


def test_federated_recipe_refuses_fp16_on_an_accelerator_with_dp_runs_before_anything_runs(tmp_path, monkeypatch):
    """The recipe's '+dp' runs would reach PrivateTrainer's GradScaler refusal only after the earlier runs: checked
    with the other '+dp' refusals. On CPU fp16 has no scaler and stays accepted (the device is faked as a GPU)."""
    import os

    from transformers import TrainingArguments

    from hf_ext.recipes.federated import main

    from .conftest import tiny_recipe_args

    out = tmp_path / "out"
    monkeypatch.setattr(TrainingArguments, "device", property(lambda self: torch.device("cuda")))
    with pytest.raises(ValueError, match=r"--fp16 on an accelerator .* pass --bf16 true"):
        main(["--output_dir", str(out), "--configs", "lora,lora+dp", *tiny_recipe_args(), "--fp16", "--use_cpu"])
    assert not os.path.exists(out)
