"""`PoissonBatchSampler` without a seed draws from a secret seed: two samplers built alike draw different batches.

With a public default seed (it was 0) anyone rebuilds which steps used a record, which voids the accountant's
amplification by subsampling.
"""

import numpy as np
import pytest

from hf_ext.federated import PoissonBatchSampler


def test_two_unseeded_samplers_draw_different_batches():
    a = list(PoissonBatchSampler(200, 0.1, num_batches=5))
    b = list(PoissonBatchSampler(200, 0.1, num_batches=5))
    assert a != b
    sizes = [len(x) for x in a]
    assert 0 < np.mean(sizes) < 60  # still Poisson batches of about q * N = 20


def test_a_given_seed_is_reproducible_and_checked():
    assert list(PoissonBatchSampler(50, 0.2, 3, seed=np.int64(4))) == list(PoissonBatchSampler(50, 0.2, 3, seed=4))
    for bad in (True, 1.5, "3"):
        with pytest.raises(TypeError, match="seed"):
            PoissonBatchSampler(50, 0.2, seed=bad)
