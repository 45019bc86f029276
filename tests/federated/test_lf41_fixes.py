"""Audit lf41: the client Trainer seed `seed + 1000 * round + client` collides beyond 1000 clients. The seeds are kept
(the published federated numbers and runs in progress depend on them); a federation of more clients is warned."""

import warnings

import pytest

from hf_ext.federated import FederatedArguments, PrivateTrainingArguments
from hf_ext.federated.simulation import CLIENT_SEED_STRIDE, client_seed_collision_warning, client_training_args


@pytest.fixture
def args(tmp_path):
    return PrivateTrainingArguments(output_dir=str(tmp_path), seed=3, report_to="none", use_cpu=True)


def test_seeds_are_unchanged_and_unique_below_the_stride(args):
    fed = FederatedArguments()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning below the stride
        seeds = {(r, c): client_training_args(args, fed, c, r).seed for r in (1, 2, 3) for c in (0, 1, 999)}
    assert seeds == {(r, c): 3 + 1000 * r + c for r in (1, 2, 3) for c in (0, 1, 999)}
    assert len(set(seeds.values())) == len(seeds)


def test_a_client_index_beyond_the_stride_warns_of_the_collision(args):
    fed = FederatedArguments()
    # the collision the warning names: client 1000 of round 1 trains with client 0's seed of round 2
    with pytest.warns(UserWarning, match="1001 clients: the client Trainer seed"):
        high = client_training_args(args, fed, CLIENT_SEED_STRIDE, 1).seed
    assert high == client_training_args(args, fed, 0, 2).seed


def test_warning_threshold():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client_seed_collision_warning(CLIENT_SEED_STRIDE)  # indices 0..999: every seed distinct
    with pytest.warns(UserWarning, match="shares the seed"):
        client_seed_collision_warning(CLIENT_SEED_STRIDE + 1)


def test_simulation_warns_at_construction(monkeypatch, small_tokenizer, client_datasets, training_args):
    from hf_ext.federated import FederatedSimulation

    from .conftest import tiny_llama

    # three clients against a stride of 2: the construction warns, before any round runs
    monkeypatch.setattr("hf_ext.federated.simulation.CLIENT_SEED_STRIDE", 2)
    with pytest.warns(UserWarning, match="3 clients: the client Trainer seed is seed \\+ 2 \\* round"):
        FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, FederatedArguments(), training_args)
