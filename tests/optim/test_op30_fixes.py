"""op30 audit fixes: rotational_sgdm with --sgd_momentum >= 1 and no --rotation_angle is refused when the arguments are
created (F1); a rotational tensor whose neurons cannot move (fan-in 1; fan-in 2 with zero_mean) is named in a warning
(F2); an untied LM head is plain by default, as a tied one is (F3)."""

import pytest

from hf_ext.optim import WarmupFreeTrainingArguments


# ----------------------------------------------------------------------------------------------------------------------
# F1: the SGD-momentum equilibrium angle needs momentum < 1; --sgd_momentum 1.0 passed the arguments and the trainer's
# constructor and failed at the first optimizer step of train()
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("momentum", [1.0, 1.5])
def test_rotational_sgdm_momentum_without_an_angle_is_refused_when_the_arguments_are_created(tmp_path, momentum):
    kw = dict(output_dir=str(tmp_path), use_cpu=True, normalized_optimizer="rotational_sgdm", sgd_momentum=momentum)
    with pytest.raises(ValueError, match=r"--sgd_momentum < 1 .*--rotation_angle"):
        WarmupFreeTrainingArguments(**kw)
    # an explicit angle needs no equilibrium angle; other optimizers do not read --sgd_momentum
    WarmupFreeTrainingArguments(**kw, rotation_angle=0.01)
    WarmupFreeTrainingArguments(**{**kw, "normalized_optimizer": "rotational_adamw"})
    WarmupFreeTrainingArguments(**{**kw, "sgd_momentum": 0.99})


# ----------------------------------------------------------------------------------------------------------------------
# F2: a rotational tensor whose neurons have one entry (fan-in 1, e.g. nn.Linear(1, n)) or two with zero_mean (centred
# to (a, -a)) can never rotate: with the default grouping (the model) such a first layer stayed exactly where it was,
# without a word
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("owner", ["lion_ar", "rotational_adamw"])
@pytest.mark.parametrize("fan_in, zero_mean, immobile", [(1, True, True), (1, False, True), (2, True, True),
                                                         (2, False, False), (3, True, False)])  # fmt: skip
def test_a_rotational_tensor_that_cannot_move_is_named_at_its_first_step(owner, fan_in, zero_mean, immobile):
    import warnings

    import torch
    from torch import nn

    from hf_ext.optim import LionAR, RotationalWrapper

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(fan_in, 8), nn.Tanh(), nn.Linear(8, 1))
    cls = LionAR if owner == "lion_ar" else RotationalWrapper
    opt = cls(model, lr=1e-2, weight_decay=1.0, zero_mean=zero_mean)
    x = torch.randn(32, fan_in)
    for step in range(3):
        model.zero_grad()
        model(x).pow(2).mean().backward()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            opt.step()
        named = [w for w in caught if "will never change" in str(w.message)]
        if step == 0 and immobile:
            assert len(named) == 1 and f"shape ({8}, {fan_in})" in str(named[0].message)
        else:  # once per tensor, and never for a tensor that can move (the 8-input second layer)
            assert not named


# ----------------------------------------------------------------------------------------------------------------------
# F3: an untied LM head (LlamaConfig's default) was rotational under the model's default grouping (fixed token-row
# norms: the logit-scale cap that keeps embeddings plain); the warmup recipe's LionAR arm then ended at eval loss 6.22
# against 4.69 with the head plain
# ----------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tied", [True, False])
def test_the_lm_head_is_plain_by_default_tied_or_not(tied):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.optim import LionAR, rotational_param_groups

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, tie_word_embeddings=tied)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    head = model.lm_head.weight
    groups = rotational_param_groups(model, 1.0)
    rotational = {id(p) for g in groups if g["rotational"] for p in g["params"]}
    plain = [g for g in groups if not g["rotational"]]
    assert id(head) not in rotational and any(p is head for g in plain for p in g["params"])
    assert id(model.model.layers[0].mlp.down_proj.weight) in rotational  # the other weights stay rotational
    # opt-in keeps both embeddings and the head rotational
    everything = {id(p) for g in rotational_param_groups(model, 1.0, rotational_embeddings=True) for p in g["params"]
                  if g["rotational"]}  # fmt: skip
    assert id(head) in everything and id(model.model.embed_tokens.weight) in everything
    # LionAR(model) trains the head with plain Lion (no recorded neuron norms)
    opt = LionAR(model, lr=1e-3, weight_decay=1.0)
    ids = torch.randint(0, 32, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert "norm" not in opt.state[head] and "exp_avg" in opt.state[head]
