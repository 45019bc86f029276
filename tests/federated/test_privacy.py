"""Per-sample gradients (incl. padded batches), clipping, noise calibration, Poisson sampling, the dp-accounting
accountant (golden epsilons) and the DP Trainer (incl. checkpoint resume)."""

import math
import os

import pytest
import torch

from hf_ext.federated import (
    PoissonBatchSampler,
    PrivacyAccountant,
    PrivateTrainer,
    PrivateTrainingArguments,
    clip_per_sample,
    dp_gradient,
    noisy_sum,
    per_sample_gradients,
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


def _left_padded_batch(pads=(0, 5, 2), length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 500, (len(pads), length), generator=g)
    mask = torch.ones_like(ids)
    for i, p in enumerate(pads):
        ids[i, :p] = 0  # pad id, left padding as in the paper's tokenizer (padding_side='left')
        mask[i, :p] = 0
    return ids, ids.masked_fill(mask == 0, -100), mask


def _unpadded_loop_grads(model, ids, labels, mask):
    """Independent reference: one plain forward/backward per example with its padding removed."""
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    out = []
    for i in range(ids.shape[0]):
        keep = mask[i].bool()
        model.zero_grad()
        model(input_ids=ids[i : i + 1, keep], labels=labels[i : i + 1, keep]).loss.backward()
        out.append({n: p.grad.detach().clone() for n, p in trainable.items()})
    model.zero_grad()
    return out


def test_per_sample_gradients_of_left_padded_rows_equal_unpadded_loop(lora_model):
    ids, labels, mask = _left_padded_batch()
    grads, _ = per_sample_gradients(lora_model, ids, labels, attention_mask=mask)
    ref = _unpadded_loop_grads(lora_model, ids, labels, mask)
    for i in range(ids.shape[0]):
        for n, r in ref[i].items():
            torch.testing.assert_close(grads[n][i], r, atol=1e-5, rtol=1e-4)


def test_dp_trainer_step_on_left_padded_batch_equals_unpadded_loop(tmp_path, lora_model, client_datasets):
    """The DP step passes the batch's attention_mask: with no noise and no effective clipping it is the mean of the
    per-example gradients of the unpadded sequences."""
    args = PrivateTrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_grad_norm=0,
        dp_clip_norm=1e6,
        per_device_train_batch_size=3,
    )
    trainer = PrivateTrainer(model=lora_model, args=args, train_dataset=client_datasets[0])
    ids, labels, mask = _left_padded_batch(seed=4)
    lora_model.zero_grad()
    trainer.training_step(lora_model, {"input_ids": ids, "labels": labels, "attention_mask": mask})
    got = {n: p.grad.detach().clone() for n, p in lora_model.named_parameters() if p.requires_grad}
    ref = _unpadded_loop_grads(lora_model, ids, labels, mask)
    for n, g in got.items():
        torch.testing.assert_close(g, sum(r[n] for r in ref) / 3, atol=1e-5, rtol=1e-4)


def _exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """Exact epsilon of a Gaussian mechanism with sensitivity/std ratio `mu` (Balle & Wang 2018), by bisection:
    delta(eps) = Phi(mu/2 - eps/mu) - exp(eps) Phi(-mu/2 - eps/mu). Independent of dp-accounting."""
    from scipy.stats import norm

    def d(eps):
        return norm.cdf(mu / 2 - eps / mu) - math.exp(eps) * norm.cdf(-mu / 2 - eps / mu)

    lo, hi = 0.0, 100.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if d(mid) > delta else (lo, mid)
    return hi


def _integer_order_rdp_epsilon(q, sigma, steps, delta):
    """Independent RDP bound (Mironov et al. 2019, integer orders; Balle et al. 2020 conversion)."""
    best = math.inf
    for a in range(2, 257):
        terms = [
            math.lgamma(a + 1)
            - math.lgamma(k + 1)
            - math.lgamma(a - k + 1)
            + (a - k) * math.log1p(-q)
            + (k * math.log(q) if k else 0.0)
            + (k * k - k) / (2 * sigma**2)
            for k in range(a + 1)
        ]
        m = max(terms)
        rdp = steps * (m + math.log(sum(math.exp(t - m) for t in terms))) / (a - 1)
        best = min(best, rdp + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1))
    return best


# (q, sigma, steps, delta) -> epsilon from dp-accounting 0.6 PLD (value_discretization_interval 1e-4)
GOLDEN_PLD = [
    ((0.01, 1.1, 1000, 1e-5), 1.5153702481094293),
    ((0.1, 0.8, 50, 1e-5), 8.062456566153791),
    ((0.25, 2.0, 200, 1e-6), 10.605937334053799),
]


@pytest.mark.parametrize("case,golden", GOLDEN_PLD)
def test_golden_epsilons(case, golden):
    q, sigma, steps, delta = case
    pld = PrivacyAccountant("pld")
    pld.step(q, sigma, steps)
    eps = pld.get_epsilon(delta)
    assert eps == pytest.approx(golden, rel=2e-3)  # the default discretization is the golden values' 1e-4
    assert eps >= golden * (1 - 1e-9)  # ... and never optimistic
    rdp = PrivacyAccountant("rdp")
    rdp.step(q, sigma, steps)
    # PLD is tighter than RDP, and dp-accounting's RDP matches an independent integer-order computation
    assert eps < rdp.get_epsilon(delta) <= _integer_order_rdp_epsilon(q, sigma, steps, delta) * (1 + 1e-6)
    assert rdp.get_epsilon(delta) > 0.9 * _integer_order_rdp_epsilon(q, sigma, steps, delta)


@pytest.mark.parametrize("sigma,steps", [(5.0, 10), (20.0, 50)])
def test_full_batch_pld_epsilon_equals_exact_gaussian(sigma, steps):
    acc = PrivacyAccountant("pld")
    acc.step(1.0, sigma, steps)
    exact = _exact_gaussian_epsilon(math.sqrt(steps) / sigma, 1e-5)
    assert acc.get_epsilon(1e-5) == pytest.approx(exact, rel=5e-3)


def test_accountant_composition_and_state():
    acc = PrivacyAccountant("rdp")
    acc.step(0.01, 1.0, 100)
    e100 = acc.get_epsilon(1e-5)
    acc.step(0.01, 1.0, 900)
    e1000 = acc.get_epsilon(1e-5)
    assert 0 < e100 < e1000 and acc.steps == 1000
    restored = PrivacyAccountant("rdp")
    restored.load_state_dict(json_roundtrip(acc.state_dict()))
    assert restored.accountant == "rdp" and restored.get_epsilon(1e-5) == e1000
    # fl9 #4: a saved state of another accountant used to replace the configured one silently (the run then reported
    # the saved accountant's epsilon, not the one it asked for)
    configured = PrivacyAccountant("pld")
    with pytest.raises(ValueError, match="saved privacy accountant is 'rdp' but this run's dp_accountant is 'pld'"):
        configured.load_state_dict(json_roundtrip(acc.state_dict()))
    assert configured.accountant == "pld" and configured.history == []
    no_noise = PrivacyAccountant()
    no_noise.step(0.1, 0.0, 1)
    assert math.isinf(no_noise.get_epsilon(1e-5))
    with pytest.raises(ValueError, match="noise_multiplier"):
        acc.step(0.1, float("nan"))
    with pytest.raises(ValueError, match="accountant"):
        PrivacyAccountant("moments")


def test_fractional_step_counts_are_refused_not_truncated():
    """A float step count (e.g. epochs * N / B) truncated to an integer would under-report epsilon: 1.9 steps
    recorded as 1 gives eps 3.53 at (q 0.5, sigma 1, delta 1e-5), where the 2 steps it stands for give 4.85."""
    acc = PrivacyAccountant()
    for bad in (1.5, 1.9, 0.5, -1, True):
        with pytest.raises(ValueError, match="num_steps"):
            acc.step(0.5, 1.0, bad)
    assert acc.history == [] and acc.steps == 0
    acc.step(0.5, 1.0, 2.0)  # an integral float is an integer count
    assert acc.history == [(0.5, 1.0, 2)] and acc.steps == 2


@pytest.mark.parametrize("bad", [0.5, 0.10001, 0.0, -1.0, float("nan")])
def test_pld_discretization_outside_0_to_0_1_is_refused(bad):
    """0.5 would be accepted by dp-accounting and report eps 10.37 where 1e-3 gives 1.83 (q 0.01, sigma 1, 1000
    steps): a valid but uselessly pessimistic bound; -1 would fail deep inside dp-accounting."""
    with pytest.raises(ValueError, match="pld_discretization"):
        PrivacyAccountant(pld_discretization=bad)
    assert PrivacyAccountant(pld_discretization=0.1).pld_discretization == 0.1  # the bound itself is allowed


def _dp_accounting_pld_epsilon(history, delta, discretization=1e-4):
    """Epsilon of Poisson-subsampled Gaussian steps composed by dp-accounting directly (not via PrivacyAccountant)."""
    import dp_accounting
    from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

    acc = PLDAccountant(value_discretization_interval=discretization)
    for q, sigma, n in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), n)
    return acc.get_epsilon(delta)


def test_loading_a_state_replaces_the_history_of_a_non_empty_accountant():
    """`load_state_dict` restores the saved steps; it must not add them to the steps the accountant already holds
    (a continued accountant restored from a checkpoint would count the saved steps twice)."""
    saved = PrivacyAccountant()
    saved.step(0.01, 1.0, 500)
    state = json_roundtrip(saved.state_dict())
    acc = PrivacyAccountant()
    acc.step(0.25, 2.0, 7)  # steps the saved state does not hold
    acc.load_state_dict(state)
    assert acc.history == [(0.01, 1.0, 500)] and acc.steps == 500
    expected = _dp_accounting_pld_epsilon([(0.01, 1.0, 500)], 1e-5)
    assert acc.get_epsilon(1e-5) == pytest.approx(expected, rel=1e-9)
    saved.load_state_dict(state)  # restoring an accountant's own state leaves it unchanged
    assert saved.history == [(0.01, 1.0, 500)] and saved.get_epsilon(1e-5) == pytest.approx(expected, rel=1e-9)


def json_roundtrip(obj):
    import json

    return json.loads(json.dumps(obj))


def test_poisson_batch_sampler_includes_each_example_with_probability_q():
    n, q = 50, 0.1
    sampler = PoissonBatchSampler(n, q, num_batches=400, seed=3)
    batches = list(sampler)
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    assert len(batches) == 400 and len(PoissonBatchSampler(n, q)) == 10  # one expected pass per epoch
    assert float(sizes.mean()) == pytest.approx(n * q, rel=0.1)
    assert float(sizes.var()) == pytest.approx(n * q * (1 - q), rel=0.3)  # binomial, not a fixed batch size
    counts = torch.zeros(n)
    for b in batches:
        assert len(set(b)) == len(b)
        counts[b] += 1
    assert float((counts / 400).sub(q).abs().max()) < 0.07
    assert list(PoissonBatchSampler(n, q, 5, seed=3)) == batches[:5]  # deterministic per (seed, epoch)
    sampler.set_epoch(1)
    assert list(sampler)[:5] != batches[:5]


def test_dp_trainer_samples_batches_by_poisson_sampling(tmp_path, lora_model, client_datasets):
    ds = client_datasets[0]
    args = PrivateTrainingArguments(
        output_dir=str(tmp_path),
        report_to="none",
        use_cpu=True,
        max_grad_norm=0,
        dp_clip_norm=1.0,
        dp_noise_multiplier=1.0,
        per_device_train_batch_size=2,
    )
    from transformers import default_data_collator

    trainer = PrivateTrainer(model=lora_model, args=args, train_dataset=ds, data_collator=default_data_collator)
    loader = trainer.get_train_dataloader()
    assert isinstance(loader.batch_sampler, PoissonBatchSampler)
    assert loader.batch_sampler.sample_rate == pytest.approx(2 / len(ds)) == trainer.sample_rate
    sizes = set()
    for epoch in range(20):
        loader.batch_sampler.set_epoch(epoch)
        sizes |= {int(b["input_ids"].shape[0]) for b in loader}
    assert 0 in sizes and max(sizes) > 2  # variable sizes, empty batches included
    empty = next(b for epoch in range(20) for b in _epoch(loader, epoch) if b["input_ids"].shape[0] == 0)
    lora_model.zero_grad()
    trainer.training_step(lora_model, empty)  # an empty batch is a pure-noise step, accounted like any other
    grads = [p.grad for p in lora_model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert trainer.accountant.steps == 1
    lora_model.zero_grad()


def _epoch(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return loader


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


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"dp_noise_multiplier": 1.0}, "needs --dp_clip_norm"),  # noise without a clip norm: DP would be off
        ({"dp_noise_multiplier": float("nan"), "dp_clip_norm": 1.0}, "dp_noise_multiplier"),
        ({"dp_noise_multiplier": float("nan")}, "dp_noise_multiplier"),
        ({"dp_noise_multiplier": float("inf"), "dp_clip_norm": 1.0}, "dp_noise_multiplier"),
        ({"dp_noise_multiplier": 1.0, "dp_clip_norm": float("nan")}, "dp_clip_norm"),
        ({"dp_noise_multiplier": 1.0, "dp_clip_norm": float("inf")}, "dp_clip_norm"),
        ({"dp_noise_multiplier": 1.0, "dp_clip_norm": 1.0, "dp_accountant": "moments"}, "dp_accountant"),
    ],
)
def test_dp_settings_that_would_silently_disable_dp_are_refused(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrivateTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, max_grad_norm=0, **kwargs)
    with pytest.raises(ValueError, match="noise_multiplier"):
        noisy_sum({"w": torch.zeros(2, 3)}, 1.0, float("nan"))


@pytest.mark.parametrize("sigma", [-1.0, -1e-3])
def test_public_dp_functions_refuse_a_negative_noise_multiplier(sigma):
    """A negative multiplier makes the noise std negative, so no noise at all would be added: `noisy_sum` and
    `dp_gradient` would release the exact gradient sum. PrivateTrainingArguments checks its own flag; these public
    functions and the accountant have only their own check."""
    clipped = {"w": torch.ones(4, 3)}
    with pytest.raises(ValueError, match="noise_multiplier"):
        noisy_sum(clipped, 1.0, sigma)
    model = torch.nn.Linear(2, 2)
    empty = torch.zeros(0, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="noise_multiplier"):
        dp_gradient(model, empty, empty, 1.0, sigma, expected_batch_size=4)
    acc = PrivacyAccountant()
    with pytest.raises(ValueError, match="noise_multiplier"):
        acc.step(0.1, sigma)
    assert acc.history == []


@pytest.mark.parametrize("max_norm", [0.0, -1.0, float("inf"), float("nan")])
def test_noise_with_a_sensitivity_that_is_not_finite_and_positive_is_refused(max_norm):
    """The noise std is sigma * max_norm: with max_norm 0 (or negative) no noise would be added and nothing said.
    `dp_gradient` on an empty Poisson batch skips `clip_per_sample` (which checks max_norm), so `noisy_sum`'s check
    is its only guard: without it the result is a silent zero gradient."""
    clipped = {"w": torch.ones(4, 3)}
    with pytest.raises(ValueError, match="max_norm"):
        noisy_sum(clipped, max_norm, 1.0)
    model = torch.nn.Linear(2, 2)
    empty = torch.zeros(0, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="max_norm"):
        dp_gradient(model, empty, empty, max_norm, 1.0, expected_batch_size=4)
    # without noise there is nothing to calibrate: the exact sum, with any max_norm
    torch.testing.assert_close(noisy_sum(clipped, max_norm, 0.0)["w"], torch.full((3,), 4.0))


def _dp_trainer(model, ds, out, max_steps=4, save_steps=2, accountant=None, **kw):
    args = PrivateTrainingArguments(
        output_dir=out,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_steps=max_steps,
        save_steps=save_steps,
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

    return PrivateTrainer(
        model=model, args=args, train_dataset=ds, data_collator=default_data_collator, accountant=accountant
    )


@pytest.mark.parametrize("max_steps, resume_at", [(4, 2), (11, 7)])  # resumed in the first / a later epoch
def test_dp_trainer_resume_matches_uninterrupted_run(tmp_path, small_tokenizer, client_datasets, max_steps, resume_at):
    from hf_ext.federated import FederatedArguments, apply_lora

    ds = client_datasets[0].select(range(12))  # q = 4/12: 3 batches per epoch
    kw = dict(max_steps=max_steps, save_steps=resume_at)

    def fresh():
        return apply_lora(tiny_llama(len(small_tokenizer)), FederatedArguments(lora_r=4), seed=0)

    # bit-identical resume needs reproducible noise: the explicit opt-in (the default noise is secret)
    full = _dp_trainer(fresh(), ds, str(tmp_path / "a"), dp_noise_seed=11, **kw)
    before = {n: p.detach().clone() for n, p in full.model.named_parameters() if p.requires_grad}
    full.train()
    after = {n: p.detach().clone() for n, p in full.model.named_parameters() if p.requires_grad}
    assert any(not torch.equal(before[n], after[n]) for n in before)
    spent = full.privacy_spent()
    assert spent["dp_steps"] == max_steps and 0 < spent["epsilon"] < math.inf
    assert max_steps == 4 or resume_at > len(full.get_train_dataloader())  # the later case resumes past epoch 0
    ckpt = str(tmp_path / "a" / f"checkpoint-{resume_at}")
    assert os.path.isfile(os.path.join(ckpt, "privacy_accountant.json"))

    resumed = _dp_trainer(fresh(), ds, str(tmp_path / "b"), dp_noise_seed=11, **kw)
    resumed.train(resume_from_checkpoint=ckpt)
    assert resumed.accountant.steps == max_steps
    assert resumed.privacy_spent()["epsilon"] == pytest.approx(spent["epsilon"])
    for n, p in resumed.model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.detach(), after[n], atol=1e-6, rtol=1e-5)


def test_dp_trainer_resumed_with_a_continued_accountant_counts_steps_once(tmp_path, small_tokenizer, client_datasets):
    """`PrivateTrainer(accountant=...)` continues a client's accountant across rounds. Resumed from a checkpoint of
    the current round, its accountant (holding the earlier rounds) must become the checkpoint's, which already
    includes the earlier rounds: adding the saved steps to it counted the earlier rounds twice."""
    from hf_ext.federated import FederatedArguments, apply_lora

    ds = client_datasets[0].select(range(12))  # q = 4/12
    earlier = [(0.05, 1.0, 100)]  # an earlier round of this client

    def continued():
        acc = PrivacyAccountant()
        for q, sigma, n in earlier:
            acc.step(q, sigma, n)
        return acc

    def fresh():
        return apply_lora(tiny_llama(len(small_tokenizer), hidden=16), FederatedArguments(lora_r=2), seed=0)

    full = _dp_trainer(fresh(), ds, str(tmp_path / "a"), max_steps=4, save_steps=2, accountant=continued())
    full.train()
    q = full.sample_rate
    assert q == pytest.approx(4 / 12)
    expected_history = earlier + [(q, 0.8, 4)]
    assert full.accountant.history == expected_history
    resumed = _dp_trainer(fresh(), ds, str(tmp_path / "b"), max_steps=4, save_steps=2, accountant=continued())
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert resumed.accountant.history == expected_history and resumed.accountant.steps == 104
    expected = _dp_accounting_pld_epsilon(expected_history, resumed.args.dp_delta)
    assert resumed.privacy_spent()["epsilon"] == pytest.approx(expected, rel=1e-9)


def _dp_sgd_args(output_dir, **kw) -> PrivateTrainingArguments:
    """Quiet CPU DP-SGD arguments (clip 1, no Trainer clipping) for the sampling and noise tests below."""
    defaults = dict(report_to="none", use_cpu=True, disable_tqdm=True, max_grad_norm=0, dp_clip_norm=1.0)
    return PrivateTrainingArguments(output_dir=str(output_dir), **{**defaults, **kw})


class _RecordingTrainer(PrivateTrainer):
    """Records, per optimizer step, which examples the batch the optimizer saw holds (rows are distinct)."""

    def __init__(self, *args, row_ids=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.row_ids = row_ids
        self.seen: list[frozenset[int]] = []

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen.append(frozenset(self.row_ids[tuple(r)] for r in inputs["input_ids"].tolist()))
        return super().training_step(model, inputs, num_items_in_batch)


def _recording_run(tmp_path, small_tokenizer, rows, bs, steps, **kw) -> _RecordingTrainer:
    """A DP-SGD (sigma 1) run over `rows` whose trainer recorded, per step, which rows the batch held."""
    from transformers import default_data_collator

    from hf_ext.federated import FederatedArguments, apply_lora

    model = apply_lora(tiny_llama(len(small_tokenizer), hidden=16), FederatedArguments(lora_r=2), seed=0)
    args = _dp_sgd_args(tmp_path, dp_noise_multiplier=1.0, per_device_train_batch_size=bs, max_steps=steps, **kw)
    trainer = _RecordingTrainer(
        model=model,
        args=args,
        train_dataset=_rows_dataset(rows),
        data_collator=default_data_collator,
        row_ids={tuple(r): i for i, r in enumerate(rows)},
    )
    trainer.train()
    return trainer


def _random_rows(n, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(3, 500, (n, length), generator=g).tolist()
    assert len({tuple(r) for r in rows}) == n
    return rows


def _rows_dataset(rows):
    from datasets import Dataset

    return Dataset.from_dict({"input_ids": rows, "labels": rows, "attention_mask": [[1] * len(rows[0])] * len(rows)})


def test_dp_trainer_draws_a_fresh_poisson_batch_every_step(tmp_path, small_tokenizer):
    """Through `Trainer.train()`: over 40 epochs, no epoch replays another's batches, the inclusion of an example in
    a step is independent of its inclusion one epoch later, and each example's inclusion frequency is about q."""


    n, bs, steps = 20, 4, 200
    q = bs / n
    rows = _random_rows(n)
    # A fixed sampling seed: the checks below are statistical, and with the default secret seed one run in a few
    # hundred drew a mean batch size > 3 sigma from n * q (CI failed on 4.495 vs 4.0 +- 0.4). The bounds are ~5 sigma.
    trainer = _recording_run(tmp_path, small_tokenizer, rows, bs, steps, learning_rate=1e-4, seed=5, dp_noise_seed=17)
    seen = trainer.seen
    assert len(seen) == steps and trainer.accountant.steps == steps
    per_epoch = round(1 / q)
    epochs = [tuple(seen[e : e + per_epoch]) for e in range(0, steps, per_epoch)]
    assert len(set(epochs)) == len(epochs) == steps // per_epoch  # no epoch replays another
    incl = torch.tensor([[i in b for i in range(n)] for b in seen], dtype=torch.float64)  # steps x examples
    same_next_epoch = float((incl[per_epoch:] == incl[:-per_epoch]).double().mean())
    assert same_next_epoch < 0.8  # independent: 1 - 2q(1-q) = 0.68; a replay gives 1.0
    freq = incl.mean(0)
    assert float((freq - q).abs().max()) < 0.15  # about q for every example (std 0.028)
    assert float(incl.sum(1).mean()) == pytest.approx(n * q, abs=0.65)  # std of the mean over 200 steps: 0.126
    assert float(incl.sum(1).var()) > 1.0  # Poisson: variable batch sizes (binomial variance 3.2)


def test_dp_simulation_draws_new_batches_every_round_and_is_reproducible(tmp_path, small_tokenizer, monkeypatch):
    """Per-round seeds reach the sampler (also with `data_seed` set); the same seeds give the same batches."""
    import hf_ext.federated.trainer as trainer_module
    from hf_ext.federated import FederatedArguments, FederatedSimulation

    rows = _random_rows(20, seed=1)
    datasets = [_rows_dataset(rows[:10]), _rows_dataset(rows[10:])]
    row_ids = {tuple(r): i for i, r in enumerate(rows)}
    log: list[tuple[str, list]] = []

    class Recording(_RecordingTrainer):
        def __init__(self, *a, **kw):
            super().__init__(*a, row_ids=row_ids, **kw)
            log.append((self.args.output_dir, self.seen))

    monkeypatch.setattr(trainer_module, "PrivateTrainer", Recording)

    def run(**kw):
        log.clear()
        args = _dp_sgd_args(
            tmp_path / "out",
            dp_noise_multiplier=1.0,
            per_device_train_batch_size=3,
            learning_rate=1e-4,
            seed=3,
            data_seed=7,
            **kw,
        )
        fed = FederatedArguments(num_rounds=2, local_steps=6, lora_r=2)
        FederatedSimulation(tiny_llama(len(small_tokenizer), hidden=16), datasets, fed, args).run()
        return [tuple(seen) for _, seen in log]  # order: round 1 client 0, client 1, round 2 client 0, client 1

    first = run(dp_noise_seed=11)
    assert len(first) == 4 and all(len(s) == 6 for s in first)
    assert first[0] != first[2] and first[1] != first[3]  # each client draws new batches in round 2
    assert run(dp_noise_seed=11) == first  # reproducible given the (privacy-voiding) dp_noise_seed
    secret = run()  # the default: secret sampling, so the same public seeds do not give the same batches
    assert secret[0] != secret[2] and secret[1] != secret[3] and secret != run()


def test_dp_sgd_sampling_is_not_rebuildable_from_the_public_seed(tmp_path, small_tokenizer):
    """As the attacker who knows the training configuration (seeds included): the accountant's amplification by
    subsampling needs the batches to be secret. With the defaults, a sampler rebuilt from the public `seed` /
    `data_seed` (or any seed derived from them) does not give the batches the run trained on; a rerun of the same
    configuration does not either. With the explicit `dp_noise_seed` opt-in the batches are reproducible."""

    from hf_ext.federated import PoissonBatchSampler

    n, bs, steps = 12, 3, 8
    rows = _random_rows(n, seed=4)

    def batches(**kw):
        return _recording_run(tmp_path, small_tokenizer, rows, bs, steps, seed=5, data_seed=6, **kw).seen

    def rebuilt(seed):
        sampler, out = PoissonBatchSampler(n, bs / n, seed=seed), []
        for epoch in range(2):  # 4 batches per epoch
            sampler.set_epoch(epoch)
            out += [frozenset(b) for b in sampler]
        return out[:steps]

    seen = batches()
    assert len(seen) == steps
    for public in (5, 6):  # the attacker's guesses from the configuration
        assert rebuilt(public) != seen
    assert batches() != seen  # secret per Trainer
    opted_in = batches(dp_noise_seed=1)
    assert batches(dp_noise_seed=1) == opted_in  # reproducible only with the opt-in


def test_dp_sgd_noise_is_not_regenerable_from_the_public_seed(tmp_path, small_tokenizer):
    """As the attacker who knows the training configuration (seeds included) and two neighbouring datasets: with the
    default settings, re-running the same configuration does not reproduce the noise, so the difference of the
    releases on D and D' is not the noiseless difference; with the explicit `dp_noise_seed` opt-in it is."""
    from transformers import default_data_collator

    from hf_ext.federated import FederatedArguments, apply_lora

    n = 6
    rows = _random_rows(n, seed=2)
    neighbour = [list(r) for r in rows]
    neighbour[3] = _random_rows(1, seed=9)[0]  # D': one record replaced

    def release(data, sigma, **kw):
        model = apply_lora(tiny_llama(len(small_tokenizer), hidden=16), FederatedArguments(lora_r=2), seed=0)
        args = _dp_sgd_args(
            tmp_path,
            dp_noise_multiplier=sigma,
            per_device_train_batch_size=n,  # q = 1: every example in the one step
            max_steps=1,
            learning_rate=1.0,
            optim="sgd",
            lr_scheduler_type="constant",
            seed=7,
            **kw,
        )
        PrivateTrainer(
            model=model, args=args, train_dataset=_rows_dataset(data), data_collator=default_data_collator
        ).train()
        return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])

    clean = release(rows, 0.0) - release(neighbour, 0.0)  # what the attacker computes offline
    noise_scale = 8.0 * 1.0 / n  # per-coordinate noise std of one release (lr 1)
    a, a_again, b = release(rows, 8.0), release(rows, 8.0), release(neighbour, 8.0)
    assert not torch.equal(a, a_again)  # fresh secret noise, even with every seed equal
    residual = (a - b) - clean  # zero if the attacker could cancel the noise
    assert float(residual.std()) == pytest.approx(2**0.5 * noise_scale, rel=0.12)  # secret noise: 5.6 s.e.
    # the explicit opt-in is reproducible, and then the noise cancels: the test can tell the difference
    a, b = release(rows, 8.0, dp_noise_seed=1), release(neighbour, 8.0, dp_noise_seed=1)
    torch.testing.assert_close(a - b, clean, atol=1e-5, rtol=0)
