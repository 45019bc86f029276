"""mu42: a test that kills a mutant of pass 36's gd-solver fix which its own tests let survive: at a saddle (g = 0)
the symmetry-breaking perturbation scales with the curvature estimate as it is, not with a floor of 1e-12."""

import pytest


@pytest.mark.parametrize("scale", [1e-14, 1e-16])
def test_gd_saddle_step_is_invariant_to_the_scale_of_the_problem(scale):
    # s f with s M at g = 0: the same step as f with M (the perturbation is p^2 L^2 / M, which scales with s). With
    # the floor L >= 1e-12 the perturbation was 277x too large at s = 1e-14 (step 3e-4 off) and at 1e-16 the step was 0
    import torch

    from hf_ext.optim.cubic_newton import solve_cubic_gd

    gen = torch.Generator().manual_seed(0)
    A = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    A = (A + A.T) / 2
    g = torch.zeros(20, dtype=torch.float64)
    h_ref, _ = solve_cubic_gd(g, lambda v: A @ v, 1.0)
    assert float(h_ref.norm()) > 1.0  # it leaves the saddle along the negative curvature
    h, _ = solve_cubic_gd(g, lambda v: (A * scale) @ v, scale)
    torch.testing.assert_close(h, h_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("block_size", [2, 3])
def test_warmup_recipe_accepts_a_two_token_block(tmp_path, block_size):
    # the bound is >= 2: a 2-token block has one next-token target (only a 1-token block has none)
    from hf_ext.recipes.warmup import WarmupRecipeArguments, WarmupTrainingArguments, validate

    recipe = WarmupRecipeArguments(arms="lion_a_no_warmup", hidden_size=32, intermediate_size=64,
                                   num_attention_heads=2, vocab_size=512, block_size=block_size)  # fmt: skip
    args = WarmupTrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, use_cpu=True, report_to=[])
    validate(recipe, args)  # no refusal
    recipe.block_size = 1
    with pytest.raises(ValueError, match=r"--block_size must be >= 2 \(got 1\)"):
        validate(recipe, args)


def test_lanczos_breakdown_is_measured_against_the_largest_hessian_vector_product():
    # the documented rule: stop when the residual is at most tol x the largest ||H v_j|| seen (a lower bound on
    # ||H||). Here v1 lies in the 1e-12 eigenspace: its residual (~1e-12) is negligible against ||H|| = 1 but not
    # against ||H v1|| (~1e-3); measured against the last product, Lanczos ran on to 5 HVPs for the same step
    import torch

    from hf_ext.optim.cubic_newton import solve_cubic_exact, solve_cubic_lanczos

    H = torch.diag(torch.tensor([1.0, 1e-12, 2e-12, 3e-12, 4e-12], dtype=torch.float64))
    g = torch.tensor([1.0, 1e-3, 1e-3, 1e-3, 1e-3], dtype=torch.float64)
    h, calls = solve_cubic_lanczos(g, lambda v: H @ v, 1.0, krylov_dim=5)
    assert calls == 2
    torch.testing.assert_close(h, solve_cubic_exact(g, H, 1.0), rtol=1e-10, atol=1e-12)
