"""Exact training targets (``nbhelpers.toyworld.exact_targets``): the world's posterior mean in place of the sampled
picture. Checked where the answer is known: at low noise the posterior sits on the one picture, so the target is the
sampled one; at high noise the two targets agree on average (the same optimum) while the exact one is far less noisy."""
import numpy as np
import pytest
import torch

from nbhelpers.toyworld import oracle as orc
from nbhelpers.toyworld.exact_targets import flow_velocity_targets


@pytest.fixture(scope="module")
def oracle(toy_model):
    return orc.WorldDenoiser(toy_model, split="train", progress=False)


def _draw(oracle, caption, sigma, n, seed):
    gen = torch.Generator().manual_seed(seed)
    j = torch.multinomial(torch.from_numpy(oracle.posterior(caption)), n, replacement=True, generator=gen)
    x0 = oracle.latents(j)
    eps = torch.randn(x0.shape, generator=gen)
    return x0, eps, (1 - sigma) * x0 + sigma * eps, torch.full((n,), sigma)


def test_at_low_noise_the_exact_target_is_the_sampled_one(oracle):
    """The support's pictures are far apart: at σ = 0.02 (log-SNR 7.8) the posterior is the picture that was noised,
    so E[ε − x0 | x_σ] = ε − x0 — a wrong scale, sign or log-SNR conversion breaks this."""
    x0, eps, x_sigma, sigma = _draw(oracle, "a red circle left of a blue square", 0.02, 16, seed=0)
    got = flow_velocity_targets(oracle, x_sigma, sigma, ["a red circle left of a blue square"] * 16)
    assert torch.allclose(got, eps - x0, atol=1e-3), float((got - (eps - x0)).abs().max())


@pytest.mark.parametrize("caption,sigma", [("a chef", 0.95), ("", 0.9)])
def test_at_high_noise_the_targets_agree_on_average_and_the_exact_one_leaves_no_noise(oracle, caption, sigma):
    n = 1500
    x0, eps, x_sigma, s = _draw(oracle, caption, sigma, n, seed=1)
    exact = flow_velocity_targets(oracle, x_sigma, s, [caption] * n).reshape(n, -1).double()
    sampled = (eps - x0).reshape(n, -1).double()
    diff = sampled - exact  # the sampled picture's own noise: mean 0 in every coordinate if the optimum is kept
    z = diff.mean(0) / (diff.std(0) / np.sqrt(n))
    assert float((z**2).mean()) < 1.5 and float(z.abs().max()) < 5.0
    # the exact target is the best prediction from x_σ: its mean square error against the sampled target (the
    # irreducible loss, all gradient noise at the optimum) is below that of a prediction that ignores the caption
    blind = flow_velocity_targets(oracle, x_sigma, s, [""] * n).reshape(n, -1).double()
    if caption:
        assert float(diff.pow(2).mean()) < float((sampled - blind).pow(2).mean())
    # and that irreducible noise is a large share of the target's spread around its mean
    share = float(diff.pow(2).sum(1).mean() / (sampled - sampled.mean(0)).pow(2).sum(1).mean())
    assert share > 0.05
