"""Audit pass 32 (fl33): Flower App run-config / node-config refusals and clients whose documents pack to no block."""

import pytest
import torch
from flwr.app import Context, RecordDict

from hf_ext.data import load_corpus
from hf_ext.federated import build_client_dataset
from hf_ext.federated.flower import _partition
from hf_ext.federated.flower_task import RUN_CONFIG_RANGES, check_node_config, check_run_config, parse_run_config


@pytest.mark.parametrize("hidden", [12, 20, 36])
def test_hidden_size_with_an_odd_head_dimension_is_refused_naming_the_key(hidden):
    """fl33 F1: `hidden-size` 12 / 20 (a multiple of 4, so accepted) gives the tiny Llama's 4 heads an odd head
    dimension: 12 failed inside the clients' forward (a tensor size mismatch), 20 in LlamaConfig on the ServerApp,
    neither naming the run-config key."""
    with pytest.raises(ValueError, match="run-config `hidden-size` must be a positive multiple of 8"):
        check_run_config(parse_run_config({"hidden-size": hidden}))


def test_every_accepted_hidden_size_builds_a_runnable_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    ok = RUN_CONFIG_RANGES["hidden-size"][1]
    for hidden in [h for h in range(1, 65) if ok(h)]:
        cfg = LlamaConfig(
            vocab_size=32,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
        LlamaForCausalLM(cfg)(input_ids=torch.tensor([[1, 2, 3]]))


def test_documents_shorter_than_one_block_are_refused_not_dropped(small_tokenizer):
    """fl33 F2: documents that pack to no full block vanished: with canaries the client trained on its canaries only,
    silently; without, the error said the client had no documents."""
    docs = load_corpus("train").select(range(2))
    for canaries in (["a canary text of a few words"] * 3, []):
        with pytest.raises(ValueError, match="fewer tokens than one block of block_size=100000"):
            build_client_dataset(docs, canaries, small_tokenizer, 100000)
    assert len(build_client_dataset(docs, ["a canary"], small_tokenizer, 32)) > 1  # documents and the canary


@pytest.mark.parametrize("value", [1.5, True, "abc", -1])
def test_a_partition_id_that_is_not_an_integer_is_refused_naming_the_key(value):
    """fl33 F3: `--node-config partition-id=1.5` (or `true`) trained partition 1 silently; `abc` failed with Python's
    `invalid literal for int()`."""
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": value}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="node-config `partition-id` must be an integer >= 0"):
        _partition(ctx)
    assert (
        _partition(Context(run_id=1, node_id=1, node_config={"partition-id": 1}, state=RecordDict(), run_config={}))
        == 1
    )


def test_the_epsilon_bound_check_reads_the_partition_id_the_same_way():
    from hf_ext.federated.flower_task import task_from_run_config

    task = task_from_run_config({"dp-clip-norm": 1.0, "dp-noise-multiplier": 1.0, "secure-aggregation": False})
    with pytest.raises(ValueError, match="node-config `partition-id` must be an integer >= 0"):
        check_node_config({"partition-id": 0.5, "dp-max-epsilon": 100.0}, task)


@pytest.mark.parametrize(
    "typo",
    [{"secagg-requierd": True}, {"dp-min-noise-multipler": 1.0}, {"dp-max-epsilom": 1.0}, {"secagg-max-coluders": 2}],
)
def test_a_mistyped_node_privacy_requirement_is_refused_not_ignored(typo):
    """fl33 F5: a node operator's mistyped requirement (`--node-config "secagg-requierd=true"`) was ignored: the node
    trained and uploaded in the clear, without DP, and the run completed."""
    from hf_ext.federated.flower_task import task_from_run_config

    task = task_from_run_config({"secure-aggregation": False})
    (key,) = typo
    with pytest.raises(ValueError, match=f"Unknown node-config keys '{key}' \\(did you mean"):
        check_node_config({"partition-id": 0, "num-partitions": 2, **typo}, task)
    # the library's ClientApp (make_client_app) refuses it too, before it looks at its data or trains
    from hf_ext.federated.flower import _local_round

    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0, **typo}, state=RecordDict(), run_config={})
    with pytest.raises(ValueError, match="Unknown node-config keys"):
        _local_round(None, None, task.fed_args, task.training_args, None, None, ctx, {}, 1)


def test_every_node_config_key_the_apps_read_is_accepted():
    from hf_ext.federated import flower
    from hf_ext.federated.flower_task import NODE_PRIVACY_KEYS, NODE_SECAGG_KEYS, check_node_config_keys

    assert set(NODE_SECAGG_KEYS) == {flower.NODE_MAX_COLLUDERS_KEY, flower.NODE_REFUSE_DROPOUTS_KEY}
    assert {flower.NODE_MAX_EPSILON_KEY, flower.NODE_MAX_DELTA_KEY} <= set(NODE_PRIVACY_KEYS)
    check_node_config_keys({k: 1 for k in [*NODE_PRIVACY_KEYS, *NODE_SECAGG_KEYS, "partition-id", "other-app-key"]})


@pytest.mark.parametrize(
    "config, match",
    [
        ({"num-partitions": 10}, r"run-config `num-partitions` must be between 1 and 9"),
        ({"aggregation": "bogus"}, r"run-config `aggregation` must be one of \['factors', 'merge_then_average'\]"),
    ],
)
def test_run_config_partitions_beyond_the_corpus_domains_and_a_bad_aggregation_are_refused_by_key(config, match):
    # more partitions than the corpus' 9 domains failed on the nodes after the run started, naming `num_clients`; a
    # bad aggregation was refused naming the recipe's --aggregation (fl33 left-alone items)
    with pytest.raises(ValueError, match=match):
        check_run_config(parse_run_config(config))
    check_run_config(parse_run_config({"num-partitions": 9, "aggregation": "merge_then_average"}))
