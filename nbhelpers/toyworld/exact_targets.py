"""Training targets from the world's exact posterior mean: the same optimum as the sampled picture, far less noise.

A denoiser trained by mean squared error against the one picture x0 behind a noisy latent z has the posterior mean
E[x0 | z, c] as its optimum, because

    E‖f(z, c) − x0‖² = E‖f(z, c) − E[x0 | z, c]‖² + E‖x0 − E[x0 | z, c]‖²,

and the second term does not depend on f. Replacing x0 by E[x0 | z, c] (Rao–Blackwellisation) therefore keeps the
loss's minimiser and removes the second term's noise from every gradient. At high noise that term is nearly all of
the loss: z says almost nothing about the picture, so the sampled x0 scatters over every picture the caption allows,
and the signal the network must learn — how that caption's pictures differ *on average* from the others' (a chef is
big 85 % of the time) — is a small bias under a large variance. Both world models learn that average shrunk toward
the unconditional one at high noise (``diagnostics.conditional_mean_shrinkage``; the model cards).

The toy world's posterior mean is known: :class:`~nbhelpers.toyworld.oracle.WorldDenoiser` with ``split="train"``
(the training distribution, held-out compositions excluded, under the training's caption process). It is exact for
a discretised world — lone objects' jitter on a 3 × 3 grid of cell centres, pairs at the centre of their jitter range —
so it stands in for the continuous world only where z cannot tell a one-pixel shift: at high noise. Given a full
caption, the grid's best cell holds a median 31 % of the posterior at log-SNR −4 (uniform over 9 cells: 11 %), 45 % at
−3 and 62 % at −2 (``WorldDenoiser``, 200 lone pictures, 2026-12-05); use these targets below −4 or so.

Rectified flow (``train_dit``): x_σ = (1 − σ)·x0 + σ·ε is the VP latent z = x_σ / √((1 − σ)² + σ²) at log-SNR
α = 2·log((1 − σ)/σ), and the velocity target ε − x0 = (x_σ − x0)/σ becomes (x_σ − E[x0 | z, c])/σ.

Measured (2026-12-05, toy-dit's model card): toy-dit cycles continued on these targets below log-SNR −4 or −3.5 did not
bring the chef's size rate closer to the world's by themselves; what did was spending the extra draws on captions that
leave the layout open ("a chef") at log-SNR −6 to −2 (toy-dit's cycles 5 and 6, with these targets below −4).
"""
from __future__ import annotations

import torch

from ..families.noise import FlowMatching


def flow_velocity_targets(oracle, x_sigma: torch.Tensor, sigma: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """E[ε − x0 | x_σ, caption] for rectified-flow latents under ``oracle`` (a ``WorldDenoiser`` in the same latent
    space), float32 shaped like ``x_sigma`` (B, C, h, w). ``sigma``: (B,) noise levels in (0, 1); ``captions``: B
    prompts ("" is the unconditional one), each one the world can caption (else ``PromptError``). The flow ↔ VP
    conversion is ``families.noise.FlowMatching``'s."""
    logsnr = FlowMatching.logsnr_of_t(sigma)
    z = (x_sigma.double() / FlowMatching().scale(logsnr).view(-1, 1, 1, 1)).float()
    x0 = oracle.pred_x0(z, logsnr, oracle.eps(z, logsnr, oracle.condition(list(captions))))
    return (x_sigma - x0) / sigma.view(-1, 1, 1, 1)
