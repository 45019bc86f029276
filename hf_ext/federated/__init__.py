"""Federated LoRA fine-tuning with memorization measurement and privacy defenses (DP, secure aggregation, Goldfish)."""

from .aggregation import (
    AGGREGATION_MODES,
    add_server_noise,
    aggregate_round,
    apply_mean_update,
    check_compatible_states,
    client_update,
    clip_update,
    fedavg,
    lora_delta,
    lora_pairs,
    merge_then_average,
    state_norm,
)
from .goldfish import GoldfishCollator, apply_goldfish, goldfish_drop_mask
from .memorization import (
    PAPER_PREFIX_LENGTHS,
    Canary,
    FrequencyPenaltyLogitsProcessor,
    assign_canaries,
    char_bleu,
    make_canaries,
    matching_prefix_tokens,
    measure_memorization,
    score_continuation,
    split_index,
    summarize_records,
)
from .privacy import (
    PoissonBatchSampler,
    PrivacyAccountant,
    clip_per_sample,
    dp_gradient,
    noisy_sum,
    per_sample_gradients,
)
from .secure_aggregation import (
    SecAggClient,
    ServerView,
    decode,
    default_threshold,
    encode,
    prg_residues,
    quantization_error_bound,
    secure_aggregate,
    shamir_combine,
    shamir_split,
    unmask_sum,
)
from .simulation import (
    FederatedArguments,
    FederatedSimulation,
    aggregate_uploads,
    apply_lora,
    apply_secure_mean,
    build_client_dataset,
    canary_rows,
    exchange_keys,
    get_exchange_state,
    prepare_upload,
    set_exchange_state,
    split_by_column,
    train_client,
)
from .trainer import PrivateTrainer, PrivateTrainingArguments

_FLOWER = ("FederatedLoRAStrategy", "initial_global_state", "make_client_app", "make_server_app")


def __getattr__(name):
    if name in _FLOWER:  # Flower is an optional extra: import it only when asked for
        from . import flower

        return getattr(flower, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AGGREGATION_MODES",
    "PAPER_PREFIX_LENGTHS",
    "Canary",
    "FederatedArguments",
    "FederatedLoRAStrategy",
    "FederatedSimulation",
    "FrequencyPenaltyLogitsProcessor",
    "GoldfishCollator",
    "PrivateTrainer",
    "PrivateTrainingArguments",
    "SecAggClient",
    "ServerView",
    "PoissonBatchSampler",
    "PrivacyAccountant",
    "add_server_noise",
    "aggregate_round",
    "aggregate_uploads",
    "apply_goldfish",
    "apply_lora",
    "apply_secure_mean",
    "apply_mean_update",
    "assign_canaries",
    "build_client_dataset",
    "canary_rows",
    "char_bleu",
    "check_compatible_states",
    "clip_per_sample",
    "clip_update",
    "client_update",
    "decode",
    "default_threshold",
    "dp_gradient",
    "encode",
    "exchange_keys",
    "fedavg",
    "get_exchange_state",
    "goldfish_drop_mask",
    "initial_global_state",
    "lora_delta",
    "lora_pairs",
    "make_canaries",
    "make_client_app",
    "make_server_app",
    "matching_prefix_tokens",
    "measure_memorization",
    "merge_then_average",
    "noisy_sum",
    "per_sample_gradients",
    "prepare_upload",
    "prg_residues",
    "quantization_error_bound",
    "score_continuation",
    "secure_aggregate",
    "set_exchange_state",
    "shamir_combine",
    "shamir_split",
    "split_by_column",
    "split_index",
    "state_norm",
    "summarize_records",
    "train_client",
    "unmask_sum",
]
