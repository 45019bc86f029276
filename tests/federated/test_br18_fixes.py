"""Bad-input audit br18, federated: arguments that used to give plausible numbers or raw errors."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from hf_ext.federated import (
    FederatedArguments,
    PrivateTrainingArguments,
    char_bleu,
    decode,
    encode,
    quantization_error_bound,
)


@pytest.mark.parametrize("max_order", [0, -1, -4])
def test_char_bleu_refuses_no_ngram_order(max_order):
    """max_order <= 0 returned the brevity penalty alone: 0.80 for an unrelated hypothesis."""
    with pytest.raises(ValueError, match="`max_order` must be >= 1"):
        char_bleu("hello world", "zzzzzzzzz", max_order=max_order)


@pytest.mark.parametrize("max_order", [True, 2.0, "4", None])
def test_char_bleu_refuses_non_int_order(max_order):
    """True ran as 1; 2.0 / "4" / None failed inside `range`."""
    with pytest.raises(TypeError, match="`max_order` must be an int >= 1"):
        char_bleu("hello world", "hello word", max_order=max_order)


@pytest.mark.parametrize("which", ["reference", "hypothesis"])
@pytest.mark.parametrize("value", [None, [], {}, ["h", "i"], b"hello"])
def test_char_bleu_refuses_non_str_texts(which, value):
    """None / [] / {} scored 0.0 as if they were empty text."""
    kwargs = {"reference": "hello world", "hypothesis": "hello world", which: value}
    with pytest.raises(TypeError, match=f"`{which}` must be a str"):
        char_bleu(**kwargs)


def test_char_bleu_valid_input_unchanged():
    assert char_bleu("", "abc") == 0.0 and char_bleu("abc", "") == 0.0  # documented: empty text scores 0
    assert char_bleu("abcdefgh", "abcd", max_order=np.int64(4)) == pytest.approx(math.exp(1 - 2))
    assert char_bleu("abcde", "abcdx", max_order=1) == pytest.approx(4 / 5)


# -- numpy scalars (br18 #3) --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, value, python_type",
    [
        ("num_rounds", np.int64(3), int),
        ("local_steps", np.int64(2), int),
        ("local_epochs", np.float32(1.0), float),
        ("lora_r", np.int64(4), int),
        ("lora_alpha", np.float32(8.0), float),
        ("lora_dropout", np.float32(0.1), float),
        ("secure_aggregation_max_colluders", np.int64(0), int),
        ("secure_aggregation_frac_bits", np.int64(24), int),
        ("secagg_max_weight", np.float32(100.0), float),
        ("client_dp_noise_multiplier", np.float32(0.0), float),
    ],
)
def test_federated_arguments_store_python_values(name, value, python_type):
    """num_rounds=np.int64(3) was stored as numpy (asdict -> json failed); max_colluders/frac_bits were refused."""
    args = FederatedArguments(**{name: value})
    assert type(getattr(args, name)) is python_type
    json.dumps(dataclasses.asdict(args))


@pytest.mark.parametrize(
    "name, value, python_type",
    [("dp_delta", np.float32(1e-5), float), ("dp_noise_multiplier", np.float32(0.0), float)],
)
def test_private_training_arguments_store_python_values(tmp_path, name, value, python_type):
    args = PrivateTrainingArguments(output_dir=str(tmp_path), report_to="none", **{name: value})
    assert type(getattr(args, name)) is python_type
    json.loads(args.to_json_string())


# -- secure-aggregation helpers (br18 #5) -------------------------------------------------------------------------------
@pytest.mark.parametrize("num_clients", [-1, 0, 2.5, math.nan, True, None])
def test_quantization_error_bound_refuses_bad_client_count(num_clients):
    """num_clients=-1 returned a negative bound."""
    with pytest.raises(ValueError, match="`num_clients` must be an int >= 1"):
        quantization_error_bound(num_clients, 10.0)


@pytest.mark.parametrize("total_weight", [0, -1.0, math.nan, math.inf, None, "10", torch.tensor([1.0, 2.0])])
def test_quantization_error_bound_refuses_bad_total_weight(total_weight):
    """total_weight=nan returned nan; 0 divided by zero."""
    with pytest.raises(ValueError, match="`total_weight` must be a finite number > 0"):
        quantization_error_bound(3, total_weight)


@pytest.mark.parametrize("frac_bits", [-1, 41, 2.0, None])
def test_quantization_error_bound_refuses_bad_frac_bits(frac_bits):
    with pytest.raises(ValueError, match="`frac_bits` must be an int in"):
        quantization_error_bound(3, 10.0, frac_bits)


def test_quantization_error_bound_valid():
    assert quantization_error_bound(np.int64(3), np.float32(4.0), 0) == pytest.approx(3 * 0.5 / 4.0)
    assert quantization_error_bound(3, torch.tensor(4.0), 0) == pytest.approx(3 * 0.5 / 4.0)  # as weights may be


@pytest.mark.parametrize("num_summands", [math.nan, 0, -2, 1.5, None, True])
def test_encode_refuses_bad_num_summands(num_summands):
    """num_summands=nan passed the `< 1` check and switched the overflow check off: 1e12 was encoded as 0."""
    with pytest.raises(ValueError, match="`num_summands` must be an int >= 1"):
        encode(torch.tensor([1e12], dtype=torch.float64), num_summands=num_summands)


@pytest.mark.parametrize("frac_bits", [2.5, None, "24"])
def test_encode_refuses_non_int_frac_bits(frac_bits):
    with pytest.raises(ValueError, match="`frac_bits` must be an int in"):
        encode(torch.tensor([1.0]), frac_bits=frac_bits)


def test_encode_overflow_still_refused_and_numpy_counts_accepted():
    with pytest.raises(ValueError, match="Value too large"):
        encode(torch.tensor([1e12], dtype=torch.float64), num_summands=np.int64(1))
    assert decode(encode(torch.tensor([1.5]), frac_bits=np.int64(8), num_summands=np.int64(3)), 8).item() == 1.5


# -- errors naming the argument (br18 #6) -------------------------------------------------------------------------------
@pytest.mark.parametrize("rates", [0.01, [0.01, 0.02], 1])
def test_client_learning_rates_must_be_a_string(rates):
    """client_learning_rates=0.01 failed with "'float' object has no attribute 'split'"."""
    with pytest.raises(ValueError, match="--client_learning_rates must be a string"):
        FederatedArguments(client_learning_rates=rates)


@pytest.mark.parametrize("delta", [None, "1e-5", True])
def test_dp_delta_must_be_a_number(tmp_path, delta):
    """dp_delta=None failed with "'<' not supported between instances of 'int' and 'NoneType'"."""
    with pytest.raises(ValueError, match=r"--dp_delta must be a number in \(0, 1\)"):
        PrivateTrainingArguments(output_dir=str(tmp_path), report_to="none", dp_delta=delta)
