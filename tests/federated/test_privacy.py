"""Per-sample clipping, noise calibration, the RDP accountant and the DP Trainer (incl. checkpoint resume)."""

import math
import os

import pytest
import torch

from hf_ext.federated import (
    PrivateTrainer,
    PrivateTrainingArguments,
    RDPAccountant,
    clip_per_sample,
    noisy_sum,
    per_sample_gradients,
    subsampled_gaussian_rdp,
)

from .conftest import tiny_llama


@pytest.fixture(scope="module")
def lora_model(small_tokenizer):
    from hf_ext.federated import FederatedArguments, apply_lora

    model = apply_lora(tiny_llama(len(small_tokenizer)), FederatedArguments(lora_r=4), seed=0)
    with torch.no_grad():  # non-zero B so that lora_A gradients are non-zero too
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return model


def test_vmap_per_sample_gradients_equal_loop_gradients(lora_model):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (3, 16), generator=g)
    labels = ids.clone()
    labels[1, 10:] = -100
    grads, losses = per_sample_gradients(lora_model, ids, labels)
    trainable = {n: p for n, p in lora_model.named_parameters() if p.requires_grad}
    assert set(grads) == set(trainable)
    for i in range(3):
        lora_model.zero_grad()
        out = lora_model(input_ids=ids[i : i + 1], labels=labels[i : i + 1])
        out.loss.backward()
        assert losses[i].item() == pytest.approx(out.loss.item(), rel=1e-5)
        for n, p in trainable.items():
            torch.testing.assert_close(grads[n][i], p.grad, atol=1e-5, rtol=1e-4)
    lora_model.zero_grad()


def test_per_sample_clipping_bounds_each_contribution(lora_model):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 500, (4, 16), generator=g)
    grads, _ = per_sample_gradients(lora_model, ids, ids)
    clip = 1e-3
    clipped, norms = clip_per_sample(grads, clip)
    assert (norms > clip).all()  # the test is meaningful: every sample needed clipping
    new_norms = torch.sqrt(sum(v.reshape(4, -1).pow(2).sum(1) for v in clipped.values()))
    assert (new_norms <= clip + 1e-6).all()
    # removing one sample changes the noiseless sum by at most the clip norm
    total = noisy_sum(clipped, clip, 0.0)
    without = noisy_sum({k: v[1:] for k, v in clipped.items()}, clip, 0.0)
    diff = math.sqrt(sum(float((total[k] - without[k]).pow(2).sum()) for k in total))
    assert diff <= clip + 1e-6


def test_noise_std_equals_sigma_times_clip():
    zeros = {"w": torch.zeros(8, 100_000)}
    out = noisy_sum(zeros, max_norm=0.3, noise_multiplier=1.7, generator=torch.Generator().manual_seed(0))
    assert float(out["w"].std()) == pytest.approx(1.7 * 0.3, rel=0.01)
    assert float(out["w"].mean()) == pytest.approx(0.0, abs=0.01)


def test_rdp_accountant():
    # q = 1: the plain Gaussian mechanism, RDP = a / (2 sigma^2)
    assert subsampled_gaussian_rdp(1.0, 2.0, 8) == pytest.approx(8 / 8)
    # order 2 closed form: log(1 + q^2 (exp(1 / sigma^2) - 1))
    q, s = 0.01, 1.3
    assert subsampled_gaussian_rdp(q, s, 2) == pytest.approx(math.log1p(q**2 * math.expm1(1 / s**2)), rel=1e-9)
    acc = RDPAccountant()
    acc.step(0.01, 1.0, 100)
    e100 = acc.get_epsilon(1e-5)
    acc.step(0.01, 1.0, 900)
    e1000 = acc.get_epsilon(1e-5)
    assert 0 < e100 < e1000
    more_noise = RDPAccountant()
    more_noise.step(0.01, 2.0, 1000)
    assert more_noise.get_epsilon(1e-5) < e1000
    full_batch = RDPAccountant()
    full_batch.step(1.0, 1.0, 1000)
    assert full_batch.get_epsilon(1e-5) > e1000  # subsampling amplifies privacy
    restored = RDPAccountant()
    restored.load_state_dict(acc.state_dict())
    assert restored.get_epsilon(1e-5) == e1000 and restored.steps == 1000
    no_noise = RDPAccountant()
    no_noise.step(0.1, 0.0, 1)
    assert math.isinf(no_noise.get_epsilon(1e-5))


def test_private_args_validation(tmp_path):
    base = dict(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match="max_grad_norm"):
        PrivateTrainingArguments(**base, dp_clip_norm=1.0)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        PrivateTrainingArguments(**base, dp_clip_norm=1.0, max_grad_norm=0, gradient_accumulation_steps=2)
    with pytest.raises(ValueError, match="goldfish_k"):
        PrivateTrainingArguments(**base, goldfish_k=1)
    with pytest.raises(ValueError, match="dp_clip_norm"):
        PrivateTrainingArguments(**base, dp_clip_norm=-1.0, max_grad_norm=0)


def _dp_trainer(model, ds, out, **kw):
    args = PrivateTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=4,
        save_steps=2,
        save_strategy="steps",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        max_grad_norm=0,
        dp_clip_norm=0.5,
        dp_noise_multiplier=0.8,
        goldfish_k=4,
        **kw,
    )
    from transformers import default_data_collator

    return PrivateTrainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator)


def test_dp_trainer_resume_matches_uninterrupted_run(tmp_path, small_tokenizer, client_datasets):
    from hf_ext.federated import FederatedArguments, apply_lora

    ds = client_datasets[0]

    def fresh():
        return apply_lora(tiny_llama(len(small_tokenizer)), FederatedArguments(lora_r=4), seed=0)

    full = _dp_trainer(fresh(), ds, str(tmp_path / "a"))
    before = {n: p.detach().clone() for n, p in full.model.named_parameters() if p.requires_grad}
    full.train()
    after = {n: p.detach().clone() for n, p in full.model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[n], after[n]) for n in before)
    spent = full.privacy_spent()
    assert spent["dp_steps"] == 4 and 0 < spent["epsilon"] < math.inf
    ckpt = str(tmp_path / "a" / "checkpoint-2")
    assert os.path.isfile(os.path.join(ckpt, "privacy_accountant.json"))

    resumed = _dp_trainer(fresh(), ds, str(tmp_path / "b"))
    resumed.train(resume_from_checkpoint=ckpt)
    assert resumed.accountant.steps == 4
    assert resumed.privacy_spent()["epsilon"] == pytest.approx(spent["epsilon"])
    for n, p in resumed.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), after[n], atol=1e-6, rtol=1e-5)
