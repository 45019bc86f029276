"""Audit rv52: the resume warning at another total train batch (rs51) under DP-SGD. It said the resumed run "trains
again 4 samples the checkpoint's run had trained" and advised `--gradient_accumulation_steps 2`: PrivateTrainer's
batches are Poisson draws (no fixed order that the resume's skip could repeat), and DP-SGD refuses accumulation."""

from __future__ import annotations

import dataclasses
import logging

from tests.federated.test_privacy import _dp_trainer, tiny_llama

LOGGER = "hf_ext.utils.resume"


def test_a_dp_sgd_resume_at_another_batch_names_the_sampling_rate_not_repeated_samples(
    tmp_path, small_tokenizer, client_datasets, caplog
):
    from hf_ext.federated import FederatedArguments, PrivateTrainer, apply_lora

    ds = client_datasets[0].select(range(12))

    def fresh():
        return apply_lora(tiny_llama(len(small_tokenizer)), FederatedArguments(lora_r=4), seed=0)

    _dp_trainer(fresh(), ds, str(tmp_path / "a"), dp_noise_seed=11, max_steps=4, save_steps=2).train()  # batch 4
    base = _dp_trainer(fresh(), ds, str(tmp_path / "b"), dp_noise_seed=11, max_steps=4, save_steps=2)
    args = dataclasses.replace(base.args, per_device_train_batch_size=2)
    resumed = PrivateTrainer(model=base.model, args=args, train_dataset=ds, data_collator=base.data_collator)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.accountant.steps == 4 and resumed.state.global_step == 4
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER and "total train batch" in r.getMessage()]
    assert len(messages) == 1
    message = messages[0]
    assert "this run's is 2" in message  # still warned: the sampling rate changed
    assert "trains again" not in message and "--gradient_accumulation_steps 2" not in message
    assert "neither trains samples again nor skips any" in message and "q = 4/12 -> 2/12" in message
    assert "--per_device_train_batch_size 4 on these processes" in message
