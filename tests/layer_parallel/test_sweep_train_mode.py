"""The perplexity evaluation of the layer-pairing sweeps gives the model its train/eval mode back."""

import torch


def test_perplexity_evaluation_gives_the_models_train_mode_back():
    """`perplexity_sweep` / `layer_pairing_task_sweep` say the source model is left untouched; the evaluation they
    run left it in eval mode (dropout off for the user's training that follows)."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.models.layer_parallel.sweep import evaluate_causal_lm

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4))  # fmt: skip
    model.train()
    model.model.layers[1].eval()  # a mixed state comes back as it was, module by module
    ids = torch.randint(0, 64, (3, 8), generator=torch.Generator().manual_seed(1)).tolist()
    evaluate_causal_lm(model, Dataset.from_dict({"input_ids": ids, "labels": ids}), batch_size=2)
    assert model.training and model.model.layers[0].training and not model.model.layers[1].training
