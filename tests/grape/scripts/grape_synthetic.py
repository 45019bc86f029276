"""Synthetic multi-domain token data and tiny Llama models shared by the GRAPE tests and launched scripts."""

from __future__ import annotations

from hf_ext.grape.synthetic import markov_sequences

VOCAB = 64

__all__ = ["VOCAB", "checkpointed_run", "markov_sequences", "quick_grape_args", "synthetic_mixture", "tiny_llama"]


def synthetic_mixture(n_per_domain: int = 48, length: int = 16, n_target: int = 24):
    """Three source domains from distinct generators; targets `t_a` (served by `a`) and `t_b` (served by `b`)."""
    from datasets import Dataset

    rows, domains = [], []
    for d, seed in (("a", 1), ("b", 2), ("c", 3)):
        seqs = markov_sequences(seed, n_per_domain, length)
        rows += seqs
        domains += [d] * len(seqs)
    train = Dataset.from_dict({"input_ids": rows, "domain": domains})
    targets = {
        "t_a": Dataset.from_dict({"input_ids": markov_sequences(1, n_target, length)}),
        "t_b": Dataset.from_dict({"input_ids": markov_sequences(2, n_target, length)}),
    }
    return train, targets


def tiny_llama(vocab: int = VOCAB, hidden: int = 32, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


def oom_once_trainer():
    """A `GrapeTrainer` subclass that raises a simulated CUDA out-of-memory error once, in the training step taken at
    `global_step == oom_at` (set on the instance), as `auto_find_batch_size` retries on."""
    from hf_ext.grape import GrapeTrainer

    class OomOnce(GrapeTrainer):
        oom_at = None

        def training_step(self, model, inputs, num_items_in_batch=None):
            if self.oom_at is not None and self.state.global_step == self.oom_at:
                self.oom_at = None
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return super().training_step(model, inputs, num_items_in_batch)

    return OomOnce


def run_with_oom(out, bs, oom_at=None, resume=None, max_steps=4, learning_rate=1e-3, **kw):
    """A GRAPE run on `synthetic_mixture` (reweighting every 2 steps) at per-device batch `bs`, whose training step
    taken at `global_step == oom_at` raises a simulated out-of-memory error once (`oom_once_trainer`)."""
    from hf_ext.grape import GrapeConfig

    train, targets = synthetic_mixture()
    args = GrapeConfig(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=bs, learning_rate=learning_rate,
        lr_scheduler_type="constant", reweight_domains_every=2, reweight_tasks_every=2, reweight_batch_size=4,
        reweight_mini_batch_size=2, domain_step_size=200, task_step_size=200, report_to="none", use_cpu=True,
        disable_tqdm=True, seed=0, plot_file="", logging_steps=1, **kw,
    )  # fmt: skip
    trainer = oom_once_trainer()(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets)
    trainer.oom_at = oom_at
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def quick_grape_args(tmp_path, **overrides):
    """A 4-step CPU `GrapeConfig` with small reweighting batches, for tests that recompute its updates."""
    from hf_ext.grape import GrapeConfig

    kw = dict(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        reweight_batch_size=4,
        reweight_mini_batch_size=2,
    )
    kw.update(overrides)
    return GrapeConfig(**kw)


def checkpointed_run(tmp_path, **overrides):
    """A 4-step GrapeTrainer run with domain and task reweighting every 2 steps that saves `checkpoint-2`; returns
    `(train, targets, checkpoint folder)` for tests that resume it with other settings."""
    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic_mixture()
    args = quick_grape_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2, reweight_domains_every=2,
                            reweight_tasks_every=2, **overrides)  # fmt: skip
    GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, target_datasets=targets).train()
    return train, targets, str(tmp_path / "checkpoint-2")


def parse_grape_recipe(argv):
    """The GRAPE recipe's argument dataclasses parsed from `argv`, as `hf_ext.recipes.grape.main` parses them."""
    from hf_ext.recipes._common import parse_recipe_args
    from hf_ext.recipes.grape import GrapeDataArguments, GrapeEvalArguments, GrapeModelArguments, GrapeRecipeConfig

    return parse_recipe_args((GrapeDataArguments, GrapeModelArguments, GrapeRecipeConfig, GrapeEvalArguments), argv)


REWEIGHTING_FLAGS = ("--reweight_domains_every", "--reweight_tasks_every", "--reweight_batch_size",
                     "--reweight_mini_batch_size")  # fmt: skip


def without_reweighting(argv, keep=()):
    """`argv` without the update-cadence / reweighting-batch flags (and their values) except those in `keep`: the
    recipe refuses them for methods that never read them (uniform, fixed; doremi's batch size, doge's task cadence)."""
    out, i = [], 0
    while i < len(argv):
        if argv[i] in REWEIGHTING_FLAGS and argv[i] not in keep:
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out
