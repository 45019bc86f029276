"""Mutation pass mu52: tests that kill surviving mutants of hf_ext.federated (per-sample loss targets)."""

import torch

from hf_ext.federated import PrivacyAccountant, per_sample_gradients

from .conftest import tiny_llama


def test_a_target_predicted_from_an_interior_padding_position_is_not_counted():
    # per_sample_gradients documents that "a target that is padding or is predicted from padding is not counted".
    # Left padding is rotated to the end first, so only a mask with a hole has a real token predicted from padding:
    # row 0 below has its position 3 masked, so target 3 -> 4 (logits at the padding position) is left out, as are
    # 2 -> 3 (a padding target). The per-sample loss is the mean cross-entropy over the other targets.
    model = tiny_llama(50).double()
    for name, p in model.named_parameters():
        p.requires_grad_("layers.1" in name)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 50, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[0, 3] = 0
    _, losses = per_sample_gradients(model, ids, ids.clone(), attention_mask=mask)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
    for row in range(2):
        m = mask[row].bool()
        counted = m[:-1] & m[1:]
        ce = torch.nn.functional.cross_entropy(logits[row, :-1], ids[row, 1:], reduction="none")
        want = ce[counted].mean()
        torch.testing.assert_close(losses[row].double(), want, rtol=1e-6, atol=1e-8)


def test_consecutive_steps_of_one_mechanism_are_one_history_entry():
    # a DP-SGD run records one step at a time: consecutive steps of the same (q, sigma) must add to one
    # `(q, sigma, steps)` entry, so that the state stays one entry per mechanism and epsilon is one self-composition
    # (one entry per step made the checkpointed state and every epsilon's PLD compositions grow with the run)
    one_by_one, at_once = PrivacyAccountant(), PrivacyAccountant()
    for _ in range(4):
        one_by_one.step(0.05, 1.0, 1)
    one_by_one.step(0.02, 1.0, 2)
    one_by_one.step(0.02, 1.0, 1)
    at_once.step(0.05, 1.0, 4)
    at_once.step(0.02, 1.0, 3)
    assert one_by_one.history == at_once.history == [(0.05, 1.0, 4), (0.02, 1.0, 3)]
    assert one_by_one.state_dict()["history"] == [[0.05, 1.0, 4], [0.02, 1.0, 3]]
    assert one_by_one.get_epsilon(1e-5) == at_once.get_epsilon(1e-5)
