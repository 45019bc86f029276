"""Per-client settings under secure aggregation (audit rv21b F1).

Each client binds the round's training config (`round_training_config`) into its signed SecAgg advertisement, so a
server that tells some clients `learning_rate=0` aborts the round. `--client_learning_rates` bypassed that: it is bound
as one string that every client receives unchanged, and each client then picks its own entry by its index. A server
sending every client `"1e-30,5e-3,1e-30"` got matching digests, the round completed, and the mean gave it client 1's
update (relative error 6.9e-9). Clients legitimately differ in such a setting, so no digest can tell an honest list from
a malicious one, and a bound on the ratio of the rates still lets the server scale the others' updates down: a
per-client setting is refused with secure aggregation, up front, and again where a client derives its arguments.
"""

import dataclasses
import os

import pytest

from hf_ext.federated import (
    FederatedArguments,
    FederatedSimulation,
    apply_lora,
    round_training_config,
    train_client,
)
from hf_ext.federated.simulation import client_training_args
from hf_ext.recipes.federated import main

from .conftest import tiny_llama, tiny_recipe_args

ATTACK = "1e-30,5e-3,1e-30"  # every client but the victim (1) trains with a negligible rate
REFUSED = "--client_learning_rates cannot be used with --secure_aggregation"


def _secagg_fed_with_rates_set_after_the_checks():
    """The arguments a server-side caller could hand a client by setting the field after `__post_init__` ran."""
    fed = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    fed.client_learning_rates = ATTACK
    return fed


def test_the_audit_attack_is_refused_when_the_arguments_are_built():
    """The repro builds `FederatedArguments(secure_aggregation=True, client_learning_rates="1e-30,5e-3,1e-30")` and
    hands every client the same arguments; on the old code they were accepted and the round revealed the victim."""
    with pytest.raises(ValueError, match=REFUSED) as info:
        FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True, client_learning_rates=ATTACK)
    assert "negligible" in str(info.value) and "turn secure aggregation off" in str(info.value)
    # either way round, and with rates that look honest too (the digest cannot tell them apart)
    with pytest.raises(ValueError, match=REFUSED):
        dataclasses.replace(FederatedArguments(secure_aggregation=True), client_learning_rates="1e-3,1e-3,1e-3")
    with pytest.raises(ValueError, match=REFUSED):
        dataclasses.replace(FederatedArguments(client_learning_rates=ATTACK), secure_aggregation=True)
    from hf_ext.federated.simulation import PER_CLIENT_SETTINGS

    assert PER_CLIENT_SETTINGS == ("client_learning_rates",)


def test_per_client_rates_set_after_the_checks_are_refused_before_any_training(
    small_tokenizer, client_datasets, training_args
):
    """The field set on already checked arguments: every place a client or the simulation derives training
    arguments from them refuses before anything trains."""
    fed = _secagg_fed_with_rates_set_after_the_checks()
    with pytest.raises(ValueError, match=REFUSED):
        FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, training_args)
    with pytest.raises(ValueError, match=REFUSED):
        round_training_config(training_args, fed, 1)
    with pytest.raises(ValueError, match=REFUSED):
        client_training_args(training_args, fed, 1, 1)
    # a client handed these arguments (the repro's loop) refuses to train
    honest = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    sim = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, honest, training_args)
    start = {k: v.clone() for k, v in sim.global_state.items()}
    model = apply_lora(tiny_llama(len(small_tokenizer)), fed, seed=training_args.seed)
    for c in range(3):
        with pytest.raises(ValueError, match=REFUSED):
            train_client(model, start, client_datasets[c], training_args, fed, c, 1)
    assert not os.path.exists(os.path.join(training_args.output_dir, "client-1"))
    # a running simulation whose arguments are changed between rounds refuses the next round before training
    sim.fed_args.client_learning_rates = ATTACK
    with pytest.raises(ValueError, match=REFUSED):
        sim.run_round()
    assert sim.round == 0 and sim.history == []
    assert all((sim.global_state[k] == start[k]).all() for k in start)


def test_flower_apps_refuse_per_client_rates_with_secure_aggregation(tmp_path):
    pytest.importorskip("flwr")
    from flwr.common import Context, RecordDict
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.federated import PrivateTrainingArguments, make_client_app, make_server_app
    from hf_ext.federated.flower import _local_round

    def model_fn():
        return LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2))  # fmt: skip

    fed = _secagg_fed_with_rates_set_after_the_checks()
    with pytest.raises(ValueError, match=REFUSED):
        make_server_app(model_fn, fed, 3)
    args = PrivateTrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    with pytest.raises(ValueError, match=REFUSED):  # the SecAgg+ ClientApp is not built
        make_client_app(model_fn, lambda i: None, fed, args)
    context = Context(run_id=1, node_id=3, node_config={"partition-id": 1, "num-partitions": 3}, state=RecordDict(),
                      run_config={})  # fmt: skip
    with pytest.raises(ValueError, match=REFUSED):
        _local_round(model_fn, lambda i: None, fed, args, None, None, context, {}, 1)
    context = Context(run_id=1, node_id=3, node_config={"partition-id": 1}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match=REFUSED):  # without num-partitions too, before the node looks at its data
        _local_round(model_fn, lambda i: None, fed, args, None, None, context, {}, 1)


def test_honest_per_client_rates_without_secure_aggregation_are_accepted(training_args):
    """Without secure aggregation the server sees every update anyway: the per-client rates keep working."""
    fed = FederatedArguments(num_rounds=1, local_steps=1, client_learning_rates="1e-3,5e-3,2e-3")
    assert [client_training_args(training_args, fed, c, 1).learning_rate for c in range(3)] == [1e-3, 5e-3, 2e-3]
    assert round_training_config(training_args, fed, 1)["federated.client_learning_rates"] == "1e-3,5e-3,2e-3"
    # and secure aggregation without per-client settings is unchanged
    secagg = FederatedArguments(num_rounds=1, local_steps=1, secure_aggregation=True)
    assert client_training_args(training_args, secagg, 1, 1).learning_rate == training_args.learning_rate


def test_the_simulation_runs_per_client_rates_without_secure_aggregation(
    small_tokenizer, client_datasets, training_args
):
    fed = FederatedArguments(num_rounds=1, local_steps=1, client_learning_rates="1e-3,5e-3,2e-3")
    sim = FederatedSimulation(tiny_llama(len(small_tokenizer)), client_datasets, fed, training_args)
    sim.run_round()
    assert sim.round == 1


def test_recipe_accepts_client_learning_rates_without_secagg_runs(tmp_path):
    from hf_ext.recipes import federated as recipe
    from hf_ext.recipes._common import parse_recipe_args

    argv = ["--configs", "lora", "--client_learning_rates", "1e-4,2e-4"]
    args = parse_recipe_args(
        recipe.ARGUMENT_CLASSES, ["--output_dir", str(tmp_path / "out"), *tiny_recipe_args(), *argv], resume="refuse"
    )
    recipe.validate(*args)  # accepted


def test_recipe_refuses_client_learning_rates_next_to_a_secagg_run_before_output_dir_exists(tmp_path):
    """Old code: accepted, and the '+secagg' run trained every client with its own rate. The FederatedArguments check
    alone would refuse it only when that run starts, after pretraining and the runs before it."""
    out = tmp_path / "out"
    argv = ["--configs", "lora,lora+secagg", "--client_learning_rates", "1e-4,1e-4"]
    with pytest.raises(ValueError, match="--client_learning_rates cannot be used with the '\\+secagg' runs of --conf"):
        main(["--output_dir", str(out), *tiny_recipe_args(), *argv])
    assert not out.exists()
