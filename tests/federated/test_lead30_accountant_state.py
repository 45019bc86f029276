"""`PrivacyAccountant.load_state_dict` took any history entry (q > 1, negative step counts, NaN sigma) from a saved
state and reported an epsilon from it, or failed later inside dp-accounting (fa30, left alone; fixed by the lead)."""

import pytest

from hf_ext.federated.privacy import PrivacyAccountant


@pytest.mark.parametrize(
    "entry",
    [[1.5, 1.0, 10], [0.1, 1.0, -3], [0.1, float("nan"), 10], [0.1, -1.0, 10], [0.1, 1.0, 2.5], [0.1, 1.0], "x"],
)
def test_a_corrupt_history_entry_is_refused(entry):
    acc = PrivacyAccountant()
    with pytest.raises(ValueError, match="Saved accountant history entry .* the saved privacy state was edited"):
        acc.load_state_dict({"accountant": acc.accountant, "history": [[0.1, 1.0, 5], entry]})
    assert acc.history == []  # nothing half-loaded


def test_a_saved_state_round_trips_exactly():
    acc = PrivacyAccountant()
    acc.step(0.1, 1.1, 7)
    acc.step(0.0, 1.1, 2)
    acc.step(0.2, 0.9, 3)
    again = PrivacyAccountant()
    again.load_state_dict(acc.state_dict())
    assert again.history == acc.history
    assert again.get_epsilon(1e-5) == acc.get_epsilon(1e-5)
