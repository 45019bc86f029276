"""PrivacyAccountant reports the PLD epsilon of dp-accounting's `PLDAccountant` while building each step's PLD once.

PrivateTrainer reports epsilon at every log; before, each report rebuilt the subsampled-Gaussian PLD from scratch
(0.2-0.7 s at the default discretization), so a run logging every step spent more time accounting than training.
"""

import pytest
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

from hf_ext.federated.privacy import PrivacyAccountant


def _reference(acc: PrivacyAccountant, delta: float) -> float:
    ref = PLDAccountant(value_discretization_interval=acc.pld_discretization)
    ref.compose(acc.dp_event())
    return max(float(ref.get_epsilon(delta)), 0.0)


@pytest.mark.parametrize(
    "history,disc",
    [
        ([(0.01, 1.0, 40)], 1e-4),
        ([(0.1, 2.0, 12), (0.01, 1.0, 30)], 1e-3),
        ([(0.003, 2.0, 25), (0.0, 2.0, 9), (0.1, 2.0, 13), (0.003, 2.0, 4)], 1e-2),
    ],
)
def test_pld_epsilon_is_pld_accountants(history, disc):
    acc = PrivacyAccountant("pld", pld_discretization=disc)
    for q, s, n in history:
        acc.step(q, s, n)
    for delta in (1e-5, 1e-3):
        assert acc.get_epsilon(delta) == _reference(acc, delta)  # the same arithmetic: equal, not close


def test_each_steps_pld_is_built_once_across_logs(monkeypatch):
    calls = []
    real = privacy_loss_distribution.from_gaussian_mechanism

    def counting(*args, **kwargs):
        calls.append(kwargs.get("sampling_prob"))
        return real(*args, **kwargs)

    monkeypatch.setattr(privacy_loss_distribution, "from_gaussian_mechanism", counting)
    acc = PrivacyAccountant("pld", pld_discretization=1e-2)
    epsilons = []
    for _ in range(4):  # four logs of a run with one sampling rate
        acc.step(0.05, 1.0, 5)
        epsilons.append(acc.get_epsilon(1e-5))
    acc.step(0.02, 1.0, 5)  # a round with another sampling rate adds one more build
    epsilons.append(acc.get_epsilon(1e-5))
    assert calls == [0.05, 0.02]
    assert epsilons == sorted(epsilons) and epsilons[0] > 0
    monkeypatch.setattr(privacy_loss_distribution, "from_gaussian_mechanism", real)
    assert epsilons[-1] == _reference(acc, 1e-5)
