"""Which latent pixels one denoising step relies on (after Park, Ju & Lee 2024, "Explaining the diffusion
process"), for a :class:`nbhelpers.timesteps.Trace`:

- :func:`rise_saliency` (DF-RISE): random coarse masks on the latent at one step; the masked region is
  replaced by fresh noise (which carries no information and keeps the latent's statistics); each
  mask is scored by the similarity of the masked pass's predicted clean latent to the unmasked one;
  saliency = Σ score·mask / (N·p), i.e. normalised by the mask density.
- :func:`gradcam_saliency` (DF-CAM): class-activation maps on a UNet block at one step, for the
  similarity of the predicted clean latent to the final latent. By default HiResCAM's element-wise
  gradient × activation (its magnitude); ``weighting="gradcam"`` gives classic Grad-CAM.

The similarity is Pearson's correlation of the two latents (the cosine of their deviations from each
channel's spatial mean), not the raw cosine. A flat background carries no content but most of a latent's
energy, so a raw cosine is decided by the background: on the toy world DF-RISE with the raw cosine ranked
the object's pixels *below* a random map (AUROC 0.42-0.44 on 10 images), with the correlation at 0.70-0.78. Classic
Grad-CAM (channel-averaged gradients, rectified) picks the object or exactly its complement depending on
the signs of a few channels (AUROC 0.02 to 0.99 from image to image, mean 0.60); the element-wise
magnitude does not average signs away (AUROC ≥ 0.9 on every one of 20 images).
- :func:`faithfulness`: insertion and deletion curves on the latent in saliency order, each point
  scored with SSIM of the decoded prediction against the decoded unperturbed prediction, their AUCs,
  and the same for random orders as the baseline.

Maps are (h, w) at the latent's resolution; every UNet pass of one analysis goes in one batch
(``max_batch`` splits it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import cached
from .hooks import module_hooks
from .metrics import ssim
from .timesteps import Trace
from .validate import ArgumentError, validated


# -- saliency at one step ---------------------------------------------------------------------------------
@dataclass
class Saliency:
    """A saliency map (h, w) at latent resolution for one step, with how it was made."""

    map: np.ndarray
    step: int
    logsnr: float
    method: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"method": self.method, "step": self.step, "logsnr": self.logsnr, "params": self.params}


def _pred_x0(model, z, a, cond, max_batch):
    e = model.eps(z, a, cond, max_batch=max_batch)
    return model.pred_x0(z, a, e)


def _check_step(tr: Trace, step: int) -> int:
    step = int(step)
    if not 0 <= step < tr.n_steps:
        raise ArgumentError(f"step {step} is outside 0..{tr.n_steps - 1} (this trace has {tr.n_steps} steps)")
    return step


def _similarity_rows(a: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each latent in ``a`` (N, C, h, w) with ``ref`` (1, C, h, w): the cosine of
    their deviations from each channel's spatial mean (see the module docstring for why). Shape (N,)."""
    a = a - a.mean(dim=(2, 3), keepdim=True)
    ref = ref - ref.mean(dim=(2, 3), keepdim=True)
    return torch.nn.functional.cosine_similarity(a.flatten(1), ref.flatten(1).expand(a.shape[0], -1), dim=1)


@validated
@torch.no_grad()
@cached("timesteps")
def rise_saliency(model, tr: Trace, step: int, n_masks: int = 256, p: float = 0.5, cells: int = 4, seed: int = 0,
                  max_batch: int = 128) -> Saliency:
    """DF-RISE saliency at ``step`` (see the module docstring): ``n_masks`` random masks of
    ``cells``×``cells`` cells kept with probability ``p``, bilinearly upsampled with a random shift."""
    step = _check_step(tr, step)
    if not 0 < p < 1:
        raise ArgumentError(f"p must be in (0, 1), got {p}")
    h, w = model.latent_shape[-2:]
    g = torch.Generator().manual_seed(int(seed))
    grid = (torch.rand(n_masks, 1, cells, cells, generator=g) < p).float()
    ch, cw = -(-h // cells), -(-w // cells)
    up = torch.nn.functional.interpolate(grid, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear",
                                         align_corners=False)
    dx = torch.randint(0, ch, (n_masks,), generator=g)
    dy = torch.randint(0, cw, (n_masks,), generator=g)
    masks = torch.stack([up[i, :, dx[i]:dx[i] + h, dy[i]:dy[i] + w] for i in range(n_masks)])  # (N, 1, h, w)
    z = tr.latent(step)
    a = float(tr.logsnrs[step])
    cond = model.condition(tr.prompt)
    noise = torch.randn(z.shape, generator=g)
    ref = _pred_x0(model, z, a, cond, max_batch)
    zm = masks * z + (1 - masks) * noise
    x0 = _pred_x0(model, zm, a, cond, max_batch)
    scores = _similarity_rows(x0, ref)
    sal = (scores.view(-1, 1, 1) * masks[:, 0]).sum(0) / (n_masks * p)
    return Saliency(sal.numpy(), step, a, "DF-RISE", dict(n_masks=n_masks, p=p, cells=cells, seed=seed))


def unet_blocks(model) -> list[str]:
    """Names of the denoiser blocks :func:`gradcam_saliency` can explain (UNet: down, mid and up blocks;
    DiT/MMDiT: the transformer blocks)."""
    return model.family.feature_blocks()


@validated
@cached("timesteps")
def gradcam_saliency(model, tr: Trace, step: int, block: str | list[str] | None = None,
                     weighting: str = "hires") -> Saliency:
    """DF-CAM at ``step`` on UNet ``block`` (a name from :func:`unet_blocks`, or a list whose
    max-normalised maps are averaged; default: the last up block but one), for the similarity (Pearson)
    of the predicted clean latent to the final latent (a DiT block: its image tokens on their grid;
    default: a block two thirds of the way through). ``weighting``: ``"hires"`` (default) is
    |Σ_k ∂s/∂A_k ⊙ A_k| per location (HiResCAM's element-wise product, as a magnitude, since a
    similarity has no "class" whose sign would matter); ``"gradcam"`` is classic Grad-CAM,
    ReLU(Σ_k mean(∂s/∂A_k)·A_k). Map (h, w), ≥ 0, at latent resolution."""
    step = _check_step(tr, step)
    if weighting not in ("hires", "gradcam"):
        raise ArgumentError(f"weighting must be 'hires' or 'gradcam', not {weighting!r}")
    names = unet_blocks(model)
    blocks = [block] if isinstance(block, str) else list(block or [model.family.default_feature_block()])
    for b in blocks:
        if b not in names:
            raise ArgumentError(f"unknown denoiser block {b!r}; choose one of {names}")
    modules = dict(model.denoiser.named_modules())
    acts: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:  # the blocks' activations, through the hook layer
        for b in blocks:
            stack.enter_context(module_hooks(modules[b], forward=lambda m, i, o, b=b: acts.__setitem__(
                b, model.family.block_output(o))))
        z = tr.latent(step)
        a = float(tr.logsnrs[step])
        e = model.eps(z, a, model.condition(tr.prompt), grad=True)
        x0 = model.pred_x0(z, a, e)
        score = _similarity_rows(x0, tr.generation.latents[:1].to(x0)).sum()
        grads = torch.autograd.grad(score, [acts[b] for b in blocks])
    cams = []
    for b, grad in zip(blocks, grads):
        act, grad = model.family.feature_map(acts[b].detach()), model.family.feature_map(grad)
        if weighting == "hires":
            cam = (grad * act).sum(1, keepdim=True).abs()
        else:
            cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * act).sum(1, keepdim=True))
        cam = torch.nn.functional.interpolate(cam, size=model.latent_shape[-2:], mode="bilinear", align_corners=False)
        cam = cam[0, 0]
        cams.append(cam / cam.max() if len(blocks) > 1 and cam.max() > 0 else cam)
    params = dict(block=blocks if len(blocks) > 1 else blocks[0], weighting=weighting)
    return Saliency(torch.stack(cams).mean(0).numpy(), step, a, "DF-CAM", params)


# -- faithfulness -----------------------------------------------------------------------------------------
@dataclass
class Faithfulness:
    """Insertion and deletion curves (SSIM to the unperturbed prediction at each fraction of latent
    pixels inserted/deleted) in saliency order and for ``n_random`` random orders, and their AUCs.
    Deletion: lower AUC = more faithful; insertion: higher AUC = more faithful."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    random_deletion: np.ndarray = field(repr=False)  # (n_random, n_points)
    random_insertion: np.ndarray = field(repr=False)
    method: str = ""
    step: int = 0

    @staticmethod
    def _auc(x, y) -> float:
        return float(np.trapezoid(y, x))

    @property
    def deletion_auc(self) -> float:
        return self._auc(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> float:
        return self._auc(self.fractions, self.insertion)

    @property
    def random_deletion_auc(self) -> float:
        return float(np.mean([self._auc(self.fractions, r) for r in self.random_deletion]))

    @property
    def random_insertion_auc(self) -> float:
        return float(np.mean([self._auc(self.fractions, r) for r in self.random_insertion]))

    def to_dict(self) -> dict:
        return {"method": self.method, "step": self.step, "deletion_auc": self.deletion_auc,
                "insertion_auc": self.insertion_auc, "random_deletion_auc": self.random_deletion_auc,
                "random_insertion_auc": self.random_insertion_auc}


@validated
@torch.no_grad()
@cached("timesteps")
def faithfulness(model, tr: Trace, saliency: Saliency, n_points: int = 11, n_random: int = 4, seed: int = 0,
                 max_batch: int = 128) -> Faithfulness:
    """Insertion/deletion curves for ``saliency`` at its step (see :class:`Faithfulness`). Deleted
    latent pixels are replaced by fresh noise; insertion starts from that noise and puts the step's
    latent pixels back, most salient first. All perturbed passes share one batch."""
    step = saliency.step
    z = tr.latent(step)
    a = float(tr.logsnrs[step])
    h, w = z.shape[-2:]
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(z.shape, generator=g)
    orders = [np.argsort(-saliency.map.ravel(), kind="stable")]
    orders += [torch.randperm(h * w, generator=g).numpy() for _ in range(n_random)]
    fractions = np.linspace(0, 1, n_points)
    batch = []
    for order in orders:
        for kind in ("deletion", "insertion"):
            for f in fractions:
                keep = torch.zeros(h * w)
                keep[torch.from_numpy(order[: int(round(f * h * w))].copy())] = 1
                keep = keep.view(1, 1, h, w)
                batch.append(z * (1 - keep) + noise * keep if kind == "deletion" else noise * (1 - keep) + z * keep)
    cond = model.condition(tr.prompt)
    zb = torch.cat([z] + batch)
    images = model.decode(_pred_x0(model, zb, a, cond, max_batch))
    ref, rest = images[0], images[1:]
    scores = np.array([ssim(im, ref) for im in rest]).reshape(len(orders), 2, n_points)
    return Faithfulness(fractions, scores[0, 0], scores[0, 1], scores[1:, 0], scores[1:, 1], saliency.method, step)
