"""GRAPE's reweighting passes on a delayed-scaling FP8 model are not training steps: they leave the amax histories to
the training steps, so the FP8 state evolves as in a run without reweighting (and, under data parallelism, as one
process's on the whole batch)."""

import pytest
from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.fp8 import Fp8Linear, convert
from hf_ext.grape import GrapeTrainer


@pytest.mark.parametrize("method", ["grape", "doge"])
def test_reweighting_passes_record_nothing_in_the_fp8_histories(tmp_path, method):
    train, targets = synthetic_mixture(n_per_domain=16, n_target=8)
    model = convert(tiny_llama(), "emulated", scaling="delayed", amax_history_len=32)
    args = quick_grape_args(
        tmp_path, max_steps=3, reweight_method=method, reweight_domains_every=1, reweight_tasks_every=1
    )
    trainer = GrapeTrainer(model=model, args=args, train_dataset=train, target_datasets=targets)
    trainer.train()
    assert trainer.mixture_state.domain_updates >= 3  # the reweighting ran at every step
    layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    assert layers
    for layer in layers:
        recorded = int((layer.fp8_amax_history[:, 0] > 0).sum())
        grads = int((layer.fp8_amax_history[:, 2] > 0).sum())
        assert (recorded, grads) == (3, 3)  # one training forward and backward per step, nothing else
