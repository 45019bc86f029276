"""The virtual SGD step of NeuralGrok's outer loss at the first step of a warm-up from 0 uses the schedule's base
learning rate, which is the lr of the optimizer the user passed (`optimizers=`), not `args.learning_rate`: with
`LionAR(lr=2e-2)` and the config's default 1e-3 the first outer step was 20x smaller than every later one."""

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

import hf_ext.neuralgrok.trainer as ng_trainer
from hf_ext.neuralgrok import NeuralGrokConfig, NeuralGrokTrainer
from hf_ext.optim import LionAR


def _data(n, seed):
    ids = torch.randint(3, 64, (n, 12), generator=torch.Generator().manual_seed(seed)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _run(tmp_path, monkeypatch, optimizer_lr=None):
    seen = []
    outer_step = ng_trainer.amplifier_outer_step
    monkeypatch.setattr(ng_trainer, "amplifier_outer_step", lambda *a, **k: seen.append(k["virtual_lr"]) or
                        outer_step(*a, **k))  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, attn_implementation="eager"))  # fmt: skip
    args = NeuralGrokConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=4, outer_every=1,
                            warmup_steps=2, report_to="none", disable_tqdm=True, save_strategy="no", use_cpu=True,
                            seed=0)  # fmt: skip
    kwargs = {} if optimizer_lr is None else {"optimizers": (LionAR(model, lr=optimizer_lr, weight_decay=0.5), None)}
    NeuralGrokTrainer(model=model, args=args, train_dataset=_data(32, 1), outer_dataset=_data(8, 5), **kwargs).train()
    return args, seen


def test_the_first_outer_step_of_a_warmup_uses_the_given_optimizers_base_lr(tmp_path, monkeypatch):
    _, seen = _run(tmp_path, monkeypatch, optimizer_lr=2e-2)
    assert seen == [2e-2, 1e-2, 2e-2, 2e-2]  # then the lr of the last real step: 0 -> base, 1e-2, 2e-2, 2e-2


def test_without_a_given_optimizer_it_is_the_configured_learning_rate(tmp_path, monkeypatch):
    args, seen = _run(tmp_path, monkeypatch)
    lr = args.learning_rate
    assert seen[0] == lr and seen[1] == lr / 2
