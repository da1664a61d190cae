"""Conceptor's pseudo-token and its training (Chefer et al., ICLR 2024; the public API is :mod:`nbhelpers.conceptor`).

- :class:`ConceptorConfig`: the training hyper-parameters, with their units and defaults.
- :class:`CoefficientMLP`: dictionary embedding (d,) → coefficient α ≥ 0; :func:`mix`, :func:`pseudo_token`
  (the mixture ``Σ α_i w_i`` renormalised to a typical token's norm) and :func:`sparsity_term`.
- :func:`encode_with_token`: the template's text-encoder hidden states (B, L, D) with the pseudo-token (d,)
  in place of the placeholder's input embedding (through :func:`nbhelpers.hooks.module_hooks`).
- :func:`train_mixture`: the training loop: denoising loss on precomputed VAE latents (t uniform, noised
  with :func:`nbhelpers.immse.add_noise`, in ε-space) plus ``sparsity · (1 − cos(top-k mix, full mix))``,
  AdamW, a validation callback every ``eval_every`` steps; returns a :class:`TrainingRun` whose best
  step is the one with the highest validation score.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, fields
from dataclasses import replace as _replace
from typing import Callable

import numpy as np
import torch
from torch import nn

from .hooks import module_hooks
from .immse import add_noise
from .validate import ArgumentError, UnknownArgumentError

PLACEHOLDER = "_"  # a one-token stand-in for the pseudo-token in the template (replaced in the embeddings)
DEFAULT_TEMPLATE = "a photo of a {}"  # the paper's; a model whose captions read otherwise passes template=


# --- the hyper-parameters ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConceptorConfig:
    """Conceptor's training hyper-parameters (the paper's values on SD in brackets).

    ``k``: tokens kept at the top of the mixture and in the sparsity term [50 of 5,000];
    ``steps``: optimisation steps [500-1,000]; ``lr``: AdamW learning rate [1e-3];
    ``batch_size``: training images (latents) per step [6]; ``sparsity``: λ, the weight of
    ``1 − cos(top-k mix, full mix)`` against the denoising loss (a mean squared ε error per latent
    element) [1e-3]; ``eval_every``: steps between validations (step 0 and the last step are always
    validated); ``hidden``: the coefficient MLP's hidden width [100]; ``standardise``: standardise the
    MLP's inputs per dimension (see :class:`CoefficientMLP`).
    ``n_train``/``n_val``: training and validation images, seeds ``seed .. seed+n_train-1`` and
    ``seed + VAL_SEED_OFFSET + j``; ``seed`` also seeds the MLP's initialisation (``seed``) and the
    training draws of images, timesteps and noise (``seed + 1``). ``gen_steps``/``guidance``: the
    sampler's steps and classifier-free guidance scale for every generated image.

    ``replace(**changes)`` gives a copy with some fields changed (an unknown name is a TypeError that
    lists the fields)."""

    k: int = 5
    steps: int = 500
    lr: float = 1e-3
    batch_size: int = 6
    sparsity: float = 1e-3
    eval_every: int = 50
    hidden: int = 100
    standardise: bool = True
    n_train: int = 32
    n_val: int = 8
    seed: int = 0
    gen_steps: int = 25
    guidance: float = 3.0

    def __post_init__(self):
        from . import validate as v

        for name, lo in (("k", 1), ("steps", 0), ("n_train", 1), ("n_val", 1), ("batch_size", 1),
                         ("eval_every", 1), ("hidden", 1), ("gen_steps", 1)):
            object.__setattr__(self, name, v.whole_number(name, getattr(self, name), lo))
        object.__setattr__(self, "seed", v.seed("seed", self.seed))
        object.__setattr__(self, "lr", v.real("lr", self.lr, 0.0, None, "a learning rate such as 1e-3",
                                              open_low=True))
        object.__setattr__(self, "sparsity", v.real("sparsity", self.sparsity, 0.0, None, "a weight such as 1e-3"))
        object.__setattr__(self, "guidance", v.guidance("guidance", self.guidance))

    def replace(self, **changes) -> "ConceptorConfig":
        names = [f.name for f in fields(self)]
        unknown = [c for c in changes if c not in names]
        if unknown:
            raise UnknownArgumentError(f"unknown Conceptor setting {unknown[0]!r}; the settings are: {', '.join(names)}")
        return _replace(self, **changes) if changes else self


def check_template(template: str | None) -> str:
    """``template`` (default :data:`DEFAULT_TEMPLATE`), refused unless it has exactly one ``{}``."""
    template = template or DEFAULT_TEMPLATE
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ArgumentError(f"template must contain exactly one '{{}}' where the concept goes, e.g. 'a photo of a {{}}'; "
                         f"got {template!r}")
    return template


def _param_flags(modules) -> list:
    return [(p, p.requires_grad) for m in modules for p in m.parameters()]


@contextlib.contextmanager
def frozen(model):
    """Freeze the model's UNet, text encoder and VAE while coefficients are learned (restored after)."""
    pipe = model.pipe
    flags = _param_flags([pipe.unet, pipe.text_encoder, pipe.vae])
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


# --- the pseudo-token ------------------------------------------------------------------------------------
class CoefficientMLP(nn.Module):
    """d → hidden → 1, ReLU, absolute value: one non-negative coefficient per dictionary embedding.

    ``mean``/``std`` (d,), when given, standardise the inputs per dimension first. That is an affine
    reparametrisation of the first layer (the same family of functions as the paper's MLP) which
    only conditions the optimisation: token embeddings are small (norm ≈ 0.4) next to the layer's
    biases, so without it every coefficient starts almost equal and separates slowly."""

    def __init__(self, dim: int, hidden: int = 100, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.detach().clone())
        self.register_buffer("std", torch.ones(dim) if std is None else std.detach().clone().clamp_min(1e-8))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net((embeddings - self.mean) / self.std).squeeze(-1).abs()


def mix(alphas: torch.Tensor, embeddings: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """``Σ α_i w_i`` over all entries, or over the ``top_k`` largest coefficients only."""
    if top_k is not None:
        idx = torch.topk(alphas.detach(), min(int(top_k), alphas.numel())).indices
        return alphas[idx] @ embeddings[idx]
    return alphas @ embeddings


def pseudo_token(alphas: torch.Tensor, embeddings: torch.Tensor, target_norm: float,
                 top_k: int | None = None) -> torch.Tensor:
    """The mixture renormalised to ``target_norm`` (so its size is a typical token's, whatever the α scale)."""
    v = mix(alphas, embeddings, top_k)
    n = v.norm()
    if float(n.detach()) == 0:
        raise ArgumentError("all coefficients are zero; the mixture has no direction (raise a weight)")
    return v * (float(target_norm) / n)


def sparsity_term(alphas: torch.Tensor, embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """``1 − cos(top-k mix, full mix)``: 0 when the k largest coefficients carry the whole mixture."""
    full = mix(alphas, embeddings)
    top = mix(alphas, embeddings, k)
    return 1 - torch.nn.functional.cosine_similarity(top, full, dim=0)


def _placeholder_position(model, template: str) -> tuple[torch.Tensor, int]:
    tok = model.tokenizer
    prompt = template.format(PLACEHOLDER)
    ids = tok(prompt, padding="max_length", max_length=model.max_tokens, truncation=True,
              return_tensors="pt").input_ids
    ph = tok(PLACEHOLDER, add_special_tokens=False)["input_ids"]
    if len(ph) != 1:
        raise ArgumentError(f"the tokenizer writes the placeholder {PLACEHOLDER!r} as {len(ph)} tokens")
    pos = (ids[0] == ph[0]).nonzero().flatten()
    if len(pos) != 1:
        raise ArgumentError(f"the template {template!r} must not contain {PLACEHOLDER!r} itself")
    return ids, int(pos[0])


def encode_with_token(model, token: torch.Tensor, template: str | None = None) -> torch.Tensor:
    """Text-encoder hidden states (B, L, D) of ``template`` with the placeholder's input embedding
    replaced by ``token`` (d,) or (B, d); differentiable in ``token``."""
    template = check_template(template)
    ids, pos = _placeholder_position(model, template)
    token = token if token.ndim == 2 else token[None]
    ids = ids.expand(token.shape[0], -1).to(model.device)
    emb_layer = model.pipe.text_encoder.get_input_embeddings()

    def hook(module, inputs, output):
        out = output.clone()
        out[:, pos, :] = token.to(out.device, out.dtype)
        return out

    with module_hooks(emb_layer, forward=hook):  # the pseudo-token, through the hook layer
        return model.pipe.text_encoder(ids)[0]


# --- the training loop -------------------------------------------------------------------------------------
@dataclass
class TrainingRun:
    """What :func:`train_mixture` learned: ``best_alphas`` (n,) float64 at ``best_step`` (the checkpoint
    with the highest validation score); per checkpoint (``history_steps``) the coefficients
    ``alpha_history`` (n_checkpoints, n) and ``val_similarity``; ``losses``: the denoising loss per step
    (mean squared ε error per latent element, without the sparsity term)."""

    best_step: int
    best_alphas: np.ndarray
    history_steps: list[int]
    alpha_history: np.ndarray
    val_similarity: list[float]
    losses: list[float]


def train_mixture(model, embeddings: torch.Tensor, target_norm: float, latents: torch.Tensor, template: str,
                  config: ConceptorConfig, validate: Callable[[torch.Tensor], float], progress: bool = True,
                  desc: str = "Conceptor") -> TrainingRun:
    """Learn the coefficients of the dictionary ``embeddings`` (n, d) so that the pseudo-token, put into
    ``template``, denoises the training ``latents`` (N, C, h, w; precomputed VAE latents: the VAE never
    runs in the loop). ``validate(token)`` scores a pseudo-token (d,) (higher is better; e.g. the mean
    similarity of its images to the concept's validation images); it is called at step 0, every
    ``config.eval_every`` steps and at the last step. The model's weights are frozen throughout.
    Same arguments, same result (on CPU)."""
    from tqdm.auto import tqdm

    c = config
    dev = model.device
    emb = embeddings.to(dev)
    n = emb.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        mlp = CoefficientMLP(emb.shape[1], c.hidden, *((emb.mean(0), emb.std(0)) if c.standardise and n > 1
                                                       else (None, None))).to(dev)
    fused = dev.type == "cuda"
    opt = torch.optim.AdamW(mlp.parameters(), lr=c.lr, **({"fused": True} if fused else {}))
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda" and model.dtype == torch.float16)
    g = torch.Generator("cpu").manual_seed(c.seed + 1)
    n_t = model.pipe.scheduler.config.num_train_timesteps
    n_train = len(latents)

    history_steps, alpha_hist, val_sim, losses = [], [], [], []
    best = (-math.inf, 0, None)

    def evaluate(step):
        nonlocal best
        with torch.no_grad():
            a = mlp(emb).float()
            tok = pseudo_token(a, emb, target_norm)
        s = float(validate(tok))
        history_steps.append(step)
        alpha_hist.append(a.cpu().double().numpy())
        val_sim.append(s)
        if s > best[0]:
            best = (s, step, a.cpu().double().numpy())

    with frozen(model):
        evaluate(0)
        bar = tqdm(range(1, c.steps + 1), desc=desc, disable=not progress, leave=False)
        for step in bar:
            idx = torch.randint(0, n_train, (c.batch_size,), generator=g)
            t = torch.randint(0, n_t, (c.batch_size,), generator=g).double()
            a_snr = model.logsnr_of(t)
            e = torch.randn((c.batch_size, *latents.shape[1:]), generator=g)
            z = add_noise(latents[idx], a_snr, e).to(dev)
            e = e.to(dev)
            alphas = mlp(emb)
            tokv = pseudo_token(alphas, emb, target_norm)
            cond = encode_with_token(model, tokv, template)
            pred = model.eps(z, a_snr, cond.expand(c.batch_size, *cond.shape[1:]), grad=True)  # graph kept to the token
            den = torch.nn.functional.mse_loss(pred, e)
            loss = den + c.sparsity * sparsity_term(alphas, emb, c.k)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            losses.append(float(den.detach()))
            if progress:
                bar.set_postfix(loss=f"{float(den):.4f}", refresh=False)
            if step % c.eval_every == 0 or step == c.steps:
                evaluate(step)
        bar.close()
    _, best_step, best_alphas = best
    return TrainingRun(int(best_step), best_alphas, history_steps, np.stack(alpha_hist), val_sim, losses)
