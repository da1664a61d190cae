"""Prompt intervention (Kong et al.): invert an image to noise with the deterministic DDIM ODE,
regenerate it from that same start with and without a word, and ask whether the pixels that change
are the pixels the word's conditional information points at.

Change map: Σ_channels (z0_full - z0_without)² per latent pixel. Correlations: pixel level (Pearson
between the change map and the CMI map within each image, averaged over images) and image level
(Pearson across images between total change and the CMI value), with bootstrap intervals over images.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .info import prompt_information
from .metrics import bootstrap_ci, pearson
from .cache import cached
from .validate import validated


def _ddim(model, inverse: bool, steps: int):
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    cls = DDIMInverseScheduler if inverse else DDIMScheduler
    sched = cls.from_config(model.pipe.scheduler.config, prediction_type="epsilon", clip_sample=False)
    sched.set_timesteps(steps)
    return sched


def _flow_logsnrs(model, steps: int) -> list[float]:
    """log-SNRs of a rectified-flow family's own sampling schedule (its scheduler's shifted sigmas, Flux's
    resolution-dependent shift included), from the noisiest to the cleanest step (the trained range's ends)."""
    from .families import FlowMatching

    sched = type(model.pipe.scheduler).from_config(model.pipe.scheduler.config)
    kwargs = {}
    if sched.config.get("use_dynamic_shifting"):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        rows, cols = model.family.token_grid()
        c = sched.config
        kwargs["mu"] = calculate_shift(rows * cols, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                                       c.get("base_shift", 0.5), c.get("max_shift", 1.15))
    sched.set_timesteps(steps, **kwargs)
    t_min = model.family.noise.t_min
    return [float(FlowMatching.logsnr_of_t(float(s))) for s in sched.sigmas[:steps].double().clamp(t_min, 1 - t_min)]


def _ddim_path(model, z: torch.Tensor, cond, logsnrs: list[float], to_clean: bool) -> torch.Tensor:
    """The deterministic DDIM ODE in VP coordinates: at each log-SNR, ε̂ and x̂ from the model, then
    ``z ← sqrt(σ(α'))·x̂ + sqrt(σ(−α'))·ε̂`` at the next one (the clean x̂ after the last, when ``to_clean``).
    For a flow model this is its Euler sampler (``z_t + (t' − t)·v̂``) in the VP channel's coordinates."""
    nxt = list(logsnrs[1:]) + ([None] if to_clean else [])
    for a, a2 in zip(logsnrs, nxt):
        eps = model.eps(z, a, cond)
        x0 = model.pred_x0(z, a, eps)
        if a2 is None:
            return x0
        a2t = torch.tensor(a2)
        z = torch.sigmoid(a2t).sqrt() * x0 + torch.sigmoid(-a2t).sqrt() * eps
    return z


@validated
@torch.no_grad()
def ddim_invert(model, latent: torch.Tensor, prompt: str, steps: int = 25) -> torch.Tensor:
    """Noise latent that the deterministic DDIM sampler (no guidance) maps back to ``latent`` (DDPM families:
    diffusers' DDIM schedulers; rectified-flow families: the same ODE on the model's own flow schedule)."""
    cond = model.condition(prompt)
    z = latent.float().clone()
    if model.family.noise.kind == "flow":
        return _ddim_path(model, z, cond, _flow_logsnrs(model, steps)[::-1], to_clean=False)
    sched = _ddim(model, True, steps)
    for t in sched.timesteps:
        eps = model.eps(z, model.logsnr_of(float(t)), cond)
        z = sched.step(eps, t, z).prev_sample
    return z


@validated
@torch.no_grad()
def ddim_sample(model, noise: torch.Tensor, prompts: list[str], steps: int = 25) -> torch.Tensor:
    """Deterministic DDIM sampling without guidance from the same ``noise`` (1, C, h, w) for each
    prompt, all prompts in one batch; returns clean latents (len(prompts), C, h, w)."""
    cond = model.condition(list(prompts))
    z = noise.float().expand(len(prompts), *noise.shape[1:]).clone()
    if model.family.noise.kind == "flow":
        return _ddim_path(model, z, cond, _flow_logsnrs(model, steps), to_clean=True)
    sched = _ddim(model, False, steps)
    for t in sched.timesteps:
        eps = model.eps(z, model.logsnr_of(float(t)), cond)
        z = sched.step(eps, t, z).prev_sample
    return z


@dataclass
class InterventionResult:
    records: list[dict]
    change_maps: list[np.ndarray] = field(repr=False)
    cmi_maps: list[np.ndarray] = field(repr=False)
    params: dict = field(default_factory=dict)

    def correlations(self, n_boot: int = 1000, seed: int = 0) -> dict:
        """Pixel-level (mean within-image Pearson) and image-level Pearson, with 95 % bootstrap intervals."""
        pix = np.array([pearson(c, m) for c, m in zip(self.change_maps, self.cmi_maps)])
        change = np.array([r["change"] for r in self.records])
        cmi = np.array([r["cmi"] for r in self.records])
        n = len(self.records)
        return {
            "pixel_level": {"r": float(np.nanmean(pix)),
                            "ci95": bootstrap_ci(lambda i: np.nanmean(pix[i]), n, n_boot, seed)},
            "image_level": {"r": pearson(change, cmi),
                            "ci95": bootstrap_ci(lambda i: pearson(change[i], cmi[i]), n, n_boot, seed)},
            "n_images": n,
        }


@validated
@cached("studies")
def intervention_study(model, images, prompts: list[str], words: list[str], n: int = 32, steps: int = 25,
                       seed: int = 0, policy: str = "delete", form: str = "orthogonal") -> InterventionResult:
    """For each (image, prompt, word): invert with the prompt, regenerate with and without the word,
    and compare the change with the word's CMI map and value (``form``: of the map and value; the
    orthogonal form's maps are non-negative like the change they are compared with, as published)."""
    records, changes, cmis = [], [], []
    for k, (image, prompt, word) in enumerate(tqdm(list(zip(images, prompts, words)), desc="intervention",
                                                   leave=False)):
        x = model.latent_of(image)
        without = model.remove_word(prompt, word, policy=policy)
        z_T = ddim_invert(model, x, prompt, steps)
        full, omitted = ddim_sample(model, z_T, [prompt, without], steps)
        change = (full - omitted).pow(2).sum(0).numpy()
        info = prompt_information(model, x, prompt, words=[word], n=n, seed=seed + k, policy=policy, form=form,
                                  include_prompt=False)
        cmi = info.words[word]
        changes.append(change)
        cmis.append(cmi.map)
        records.append({"image": k, "prompt": prompt, "word": word, "without": without,
                        "change": float(change.sum()), "cmi": cmi.value, "cmi_stderr": cmi.stderr,
                        "reconstruction_error": float((full - x[0]).pow(2).mean())})
    return InterventionResult(records, changes, cmis, dict(n=n, steps=steps, seed=seed, policy=policy, form=form))
