"""Where a world model loses a rate it should draw: two measurements against the world's exact denoiser.

- :func:`conditional_mean_shrinkage`: where a denoiser's average clean-image prediction for a caption lies between the
  world's unconditional mean (0) and the caption's mean (1) at one noise level. The exact denoiser gives about 1;
  both world models give about 0.6 at log-SNR −6 for captions that leave the position open ("a chef") and about 0.95
  for captions that name it ("a chef on the left") — the model cards' finding.
- :func:`switched_sampling`: rectified-flow Euler sampling of a caption with one denoiser down to a log-SNR and
  another after it, so that a rate's loss can be placed on the noise axis (e.g. the exact denoiser to −3, the model
  after: the model's share of the loss below −3).

Both work in VP terms through the ``eps(z, logsnr, cond)`` / ``condition(prompt)`` / ``pred_x0(z, logsnr, eps)``
interface every ``DiffusionModel`` and the oracle share; ``z = sqrt(σ(α))·x + sqrt(σ(−α))·ε`` at log-SNR α.
"""
from __future__ import annotations

import numpy as np
import torch


def conditional_mean_shrinkage(denoiser, oracle, prompt: str, logsnr: float, n: int = 64, seed: int = 0) -> float:
    """Position of ``denoiser``'s mean x0-prediction for ``prompt`` at ``logsnr`` on the segment from the world's
    unconditional mean (0) to the caption's mean (1), both exact (``oracle``: a ``WorldDenoiser``, whose support and
    latent space are the models'). The ``n`` noisy latents are drawn from the prompt's own pictures (``oracle``'s
    posterior) noised to ``logsnr``, so the exact denoiser's answer is 1 up to the sampling error of ``n`` draws.
    Dimensionless; below 1 means the prediction is pulled toward the unconditional mean."""
    support = oracle.latents(torch.arange(oracle.n_support)).reshape(oracle.n_support, -1).double()
    post = torch.from_numpy(oracle.posterior(prompt))
    mean = post @ support
    uncond = torch.from_numpy(oracle.posterior("")) @ support
    gen = torch.Generator().manual_seed(seed)
    j = torch.multinomial(post, n, replacement=True, generator=gen)
    a = torch.tensor(float(logsnr), dtype=torch.float64)
    noise = torch.randn((n, support.shape[1]), generator=gen, dtype=torch.float64)
    z = (torch.sigmoid(a).sqrt() * support[j] + torch.sigmoid(-a).sqrt() * noise).float()
    z = z.view(n, *oracle.latent_shape)
    with torch.no_grad():
        eps = denoiser.eps(z, float(logsnr), denoiser.condition(prompt))
    x0 = denoiser.pred_x0(z, logsnr, eps.float()).reshape(n, -1).double().mean(0)
    d = mean - uncond
    return float((x0 - uncond) @ d / (d @ d))


def switched_sampling(first, second, prompt: str, switch_logsnr: float, decode, latent_shape: tuple, n: int = 200,
                      steps: int = 25, seed: int = 0) -> np.ndarray:
    """Images (n, H, W, 3) uint8 of ``prompt`` sampled with rectified-flow Euler steps on the σ grid of
    ``FlowMatchEulerDiscreteScheduler`` (shift 1, ``steps`` steps, from pure noise), calling ``first`` at noise levels
    whose log-SNR is below ``switch_logsnr`` and ``second`` from there on. ``decode``: latents → images (the oracle's
    or a model's). The flow latent ``x = (1 − σ)·x0 + σ·ε`` is ``z·sqrt((1 − σ)² + σ²)`` at log-SNR
    ``2·log((1 − σ)/σ)``; the velocity is ``ε̂ − x̂0``."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    sched.set_timesteps(steps)
    sigmas = [float(s) for s in sched.sigmas]  # steps + 1 values, the last 0
    conds = {id(m): m.condition(prompt) for m in (first, second)}
    x = torch.randn((n, *latent_shape), generator=torch.Generator().manual_seed(seed))
    for i in range(steps):
        s = min(sigmas[i], 1 - 5e-4)  # σ = 1 is log-SNR −∞: evaluate just inside it
        logsnr = 2 * float(np.log((1 - s) / s))
        who = first if logsnr < switch_logsnr else second
        z = x / float(np.sqrt((1 - s) ** 2 + s**2))
        with torch.no_grad():
            eps = who.eps(z, logsnr, conds[id(who)]).float()
        x = x + (sigmas[i + 1] - sigmas[i]) * (eps - who.pred_x0(z, logsnr, eps))
    return decode(x)
