"""Mutation pass mu44: tests that kill surviving mutants of the metadata code changed in audit pass 37."""


def test_the_recipe_probe_leaves_the_runs_random_state_alone():
    """check_documents_kept_apart builds its one-layer probe under a fixed seed: the run's own (seeded) random stream,
    which initialises the real model next, must come out of it unchanged."""
    import torch

    from hf_ext.data.tokenizer import build_tokenizer
    from hf_ext.recipes.metadata_pretrain import MetadataArguments, check_documents_kept_apart
    from hf_ext.recipes.pretrain import ModelArguments

    tokenizer = build_tokenizer(512)
    data = type("Data", (), {"block_size": 64})
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    check_documents_kept_apart(ModelArguments(), data, MetadataArguments(), tokenizer)
    assert torch.equal(torch.random.get_rng_state(), before)
