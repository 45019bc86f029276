"""Secure aggregation with fewer than 2 clients is refused with a message that names the real cause.

`default_threshold(1)` and `FederatedArguments(secure_aggregation=True).threshold(1)` (which `FederatedSimulation`
calls at construction) used to tell the user to lower `max_colluders` / `--secure_aggregation_max_colluders` "to at
most 0" when it already was 0: the threshold is at least 2, so one client can never reach it whatever `c` is. The
recipe and the Flower apps already refused this case with "at least 2 clients".
"""

from __future__ import annotations

import pytest

from hf_ext.federated import FederatedArguments, default_threshold


@pytest.mark.parametrize("n", [0, 1])
def test_default_threshold_names_the_client_count(n):
    with pytest.raises(ValueError, match="at least 2 clients") as err:
        default_threshold(n)
    assert "max_colluders" not in str(err.value)
    assert default_threshold(2) == 2 and default_threshold(3, 1) == 3  # from 2 clients on, as before


@pytest.mark.parametrize("n", [0, 1])
def test_federated_arguments_threshold_names_the_client_count(n):
    fed = FederatedArguments(secure_aggregation=True)
    with pytest.raises(ValueError, match="at least 2 clients") as err:
        fed.threshold(n)
    assert "--secure_aggregation_max_colluders" not in str(err.value)
    assert fed.threshold(4) == 3
