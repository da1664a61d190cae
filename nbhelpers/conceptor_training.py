"""Conceptor's pseudo-token and its training (Chefer et al., ICLR 2024; the public API is :mod:`nbhelpers.conceptor`).

- :class:`ConceptorConfig`: the training hyper-parameters, with their units and defaults.
- :class:`CoefficientMLP`: dictionary embedding (d,) → coefficient α ≥ 0; :func:`mix`, :func:`pseudo_token`
  (the mixture ``Σ α_i w_i`` renormalised to a typical token's norm) and :func:`sparsity_term`.
- :func:`text_encoders`: the family's text encoders that read the prompt (SD: CLIP; SDXL: CLIP-L and
  OpenCLIP-G; SD3: CLIP-L, OpenCLIP-G and T5; Flux: T5 and CLIP-L; PixArt: T5).
- :func:`encode_with_token`: the family's condition for the template with a pseudo-token in place of the
  placeholder's input embedding *in every text encoder* (one token per encoder, (d_e,) or (B, d_e);
  through :func:`nbhelpers.hooks.module_hooks` on each encoder's token-embedding layer, the pipeline's
  own ``encode_prompt`` doing the rest): SD 1.x/2.x hidden states (B, L, D), else a
  :class:`~nbhelpers.families.Condition` with its pooled embeddings, masks and time ids.
- :func:`train_mixture`: the training loop: denoising loss on precomputed VAE latents (t uniform, noised
  with :func:`nbhelpers.immse.add_noise`, in ε-space) plus ``sparsity · (1 − cos(top-k mix, full mix))``,
  AdamW, a validation callback every ``eval_every`` steps; returns a :class:`TrainingRun` whose best
  step is the one with the highest validation score.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
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
# Tried in this order when an encoder writes "_" as several tokens (sentencepiece without "▁_": "▁", "_"): the first
# that every encoder of the family writes as one token, found once in the template's tokens, is used.
PLACEHOLDER_CANDIDATES = (PLACEHOLDER, "x", "*", "thing", "it")
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


def pipeline_modules(model) -> list[nn.Module]:
    """Every ``torch.nn.Module`` among the pipeline's components (denoiser, VAE, every text encoder, an
    image encoder if any), in ``pipe.components`` order."""
    return [m for m in model.pipe.components.values() if isinstance(m, nn.Module)]


@contextlib.contextmanager
def frozen(model):
    """Freeze every module of the pipeline (the denoiser, the VAE, every text encoder: all of
    ``pipe.components``) while coefficients are learned; each parameter's ``requires_grad`` is
    restored after, also on error."""
    flags = _param_flags(pipeline_modules(model))
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


def pseudo_tokens(alphas: torch.Tensor, embeddings, target_norm, top_k: int | None = None):
    """:func:`pseudo_token` in every encoder: ``embeddings`` a mapping {encoder label: (n, d_e)} and
    ``target_norm`` {label: norm} give {label: (d_e,)} (the same α, each encoder's own table, each
    renormalised to its own typical norm); a tensor (n, d) and a float give the tensor (d,)."""
    if isinstance(embeddings, Mapping):
        return {k: pseudo_token(alphas, e, target_norm[k], top_k) for k, e in embeddings.items()}
    return pseudo_token(alphas, embeddings, target_norm, top_k)


def sparsity_term(alphas: torch.Tensor, embeddings, k: int) -> torch.Tensor:
    """``1 − cos(top-k mix, full mix)``: 0 when the k largest coefficients carry the whole mixture.
    ``embeddings``: (n, d), or {encoder label: (n, d_e)} (then the mean of the encoders' terms)."""
    if isinstance(embeddings, Mapping):
        terms = [sparsity_term(alphas, e, k) for e in embeddings.values()]
        return terms[0] if len(terms) == 1 else torch.stack(terms).mean()
    full = mix(alphas, embeddings)
    top = mix(alphas, embeddings, k)
    return 1 - torch.nn.functional.cosine_similarity(top, full, dim=0)


@dataclass(frozen=True)
class TextEncoderInput:
    """One text encoder that reads the prompt: the family's ``label`` for it ("CLIP", "CLIP-L",
    "OpenCLIP-G", "T5", ...), its tokenizer, the encoder module and their pipeline component names."""

    label: str
    tokenizer: object
    module: nn.Module
    tokenizer_name: str
    encoder_name: str

    def embedding_table(self) -> torch.Tensor:
        """The encoder's input token embeddings (vocab, d_e), detached."""
        return self.module.get_input_embeddings().weight.detach()

    def embedding_layers(self) -> list[nn.Module]:
        """The modules that look input ids up in that table (T5's encoder calls its own ``embed_tokens``,
        which shares the weight of ``get_input_embeddings()`` but is another module)."""
        w = self.module.get_input_embeddings().weight
        return [m for m in self.module.modules() if isinstance(m, nn.Embedding) and m.weight is w]


_COMPONENT_PAIRS = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))


def text_encoders(model) -> list[TextEncoderInput]:
    """The text encoders of the model's family that read the prompt, in the family's order
    (``model.family.encoders()``; the first is the one whose words the methods index): each slot's
    tokenizer matched (by identity) to its pipeline component ``tokenizer[_n]`` and so to
    ``text_encoder[_n]``. A pooled-only encoder (Flux's CLIP-L) is one of them: it reads the prompt too."""
    comps = model.pipe.components
    out, used = [], set()
    for slot in model.family.encoders():
        for tok_name, enc_name in _COMPONENT_PAIRS:
            if tok_name not in used and comps.get(tok_name) is slot.tokenizer and comps.get(enc_name) is not None:
                used.add(tok_name)
                out.append(TextEncoderInput(slot.label, slot.tokenizer, comps[enc_name], tok_name, enc_name))
                break
        else:
            raise ArgumentError(f"the {slot.label} tokenizer of {type(model.pipe).__name__} has no text encoder among "
                                f"the pipeline's components ({', '.join(k for k, v in comps.items() if v is not None)}); "
                                "Conceptor needs every text encoder that reads the prompt")
    return out


def _one_token(tokenizer, text: str) -> int | None:
    """The id of ``text`` when the tokenizer writes it as one ordinary token (not a special or unknown one)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return int(ids[0]) if len(ids) == 1 and ids[0] not in set(tokenizer.all_special_ids) else None


def placeholder(model, template: str) -> tuple[str, dict[str, int]]:
    """The placeholder put where the pseudo-token goes, and its token id in each encoder ({label: id}):
    the first of :data:`PLACEHOLDER_CANDIDATES` that every encoder writes as one token and finds exactly
    once among the tokens of ``template.format(placeholder)``."""
    encs = text_encoders(model)
    for ph in PLACEHOLDER_CANDIDATES:
        ids = {}
        for e in encs:
            i = _one_token(e.tokenizer, ph)
            if i is None or list(e.tokenizer(template.format(ph))["input_ids"]).count(i) != 1:
                break
            ids[e.label] = i
        else:
            return ph, ids
    raise ArgumentError(f"no placeholder among {PLACEHOLDER_CANDIDATES} is one token, once, in the template {template!r} "
                        f"for every encoder ({', '.join(e.label for e in encs)}); use a template without "
                        f"{PLACEHOLDER!r}, such as 'a photo of a {{}}'")


def _token_map(encs: list[TextEncoderInput], token) -> dict[str, torch.Tensor]:
    """{label: (B, d_e)} from a mapping over every encoder, or one tensor for a one-encoder family."""
    labels = [e.label for e in encs]
    if isinstance(token, Mapping):
        if sorted(token) != sorted(labels):
            raise ArgumentError(f"pseudo-tokens are given for {sorted(token)} but this model's text encoders are "
                                f"{labels}; give one token per encoder (Decomposition.tokens() does)")
        toks = dict(token)
    elif len(encs) == 1:
        toks = {labels[0]: token}
    else:
        raise ArgumentError(f"this model has {len(encs)} text encoders ({', '.join(labels)}) and one tensor was given; "
                            "give {label: token} with one token per encoder (Decomposition.tokens() does)")
    out = {}
    for e in encs:
        t = toks[e.label]
        t = t if t.ndim == 2 else t[None]
        d = e.embedding_table().shape[1]
        if t.ndim != 2 or t.shape[1] != d:
            raise ArgumentError(f"the {e.label} pseudo-token has shape {tuple(toks[e.label].shape)}; that encoder's "
                                f"embeddings have {d} dimensions: give ({d},) or (B, {d})")
        out[e.label] = t
    batches = {t.shape[0] for t in out.values()} - {1}
    if len(batches) > 1:
        raise ArgumentError(f"the encoders' pseudo-tokens have different batch sizes {sorted(batches)}; give 1 or B each")
    return out


def encode_with_token(model, token, template: str | None = None):
    """The model's condition for ``template`` with the placeholder's input embedding replaced by the
    pseudo-token in every text encoder of the family; differentiable in the tokens.

    ``token``: for a one-encoder family (SD 1.x/2.x, PixArt) a tensor (d,) or (B, d); for any family a
    mapping {encoder label: (d_e,) or (B, d_e)} with one entry per :func:`text_encoders` label (what
    :func:`pseudo_tokens` gives). The prompt goes through the pipeline's own ``encode_prompt`` (the
    family's ``encode``: CLIP penultimate hidden states and pooled outputs for SDXL/SD3, CLIP's pooled
    output and T5's last hidden states for Flux, T5 with its attention mask for PixArt), with a forward
    hook on each encoder's token-embedding layer that puts the token where the placeholder's id is.
    Returns what ``model.condition`` returns, batch B: SD's hidden states (B, L, D), else a
    :class:`~nbhelpers.families.Condition`. Raises if an encoder never saw the placeholder."""
    template = check_template(template)
    encs = text_encoders(model)
    toks = _token_map(encs, token)
    ph, ph_ids = placeholder(model, template)
    batch = max(t.shape[0] for t in toks.values())
    seen = {e.label: 0 for e in encs}

    def make_hook(label: str):
        ph_id, tok = ph_ids[label], toks[label]

        def hook(module, inputs, output):
            at = inputs[0] == ph_id  # (B, L): the placeholder's position in each row
            per_row = at.sum(1)
            if not bool((per_row == 1).all()):
                raise ArgumentError(f"the {label} encoder got rows with {per_row.tolist()} placeholder tokens "
                                    f"({ph!r}) instead of one each")
            out = output.clone()
            t = tok.to(out.device, out.dtype)
            out[at] = t.expand(out.shape[0], -1) if t.shape[0] == 1 else t  # row-major: one per row, in order
            seen[label] += 1
            return out

        return hook

    with contextlib.ExitStack() as stack:  # the pseudo-token, through the hook layer, in every encoder
        for e in encs:
            for layer in e.embedding_layers():
                stack.enter_context(module_hooks(layer, forward=make_hook(e.label)))
        cond = model.family.encode([template.format(ph)] * batch, model.device, model.dtype)
    missed = [lab for lab, n in seen.items() if n == 0]
    if missed:
        raise ArgumentError(f"the pseudo-token never reached the {', '.join(missed)} encoder(s) of {model.family.title}: "
                            "its token embeddings were not looked up while the prompt was encoded")
    return cond


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


def train_mixture(model, embeddings, target_norm, latents: torch.Tensor, template: str,
                  config: ConceptorConfig, validate: Callable, progress: bool = True,
                  desc: str = "Conceptor") -> TrainingRun:
    """Learn the coefficients of the dictionary ``embeddings`` so that the pseudo-token, put into
    ``template``, denoises the training ``latents`` (N, C, h, w; precomputed VAE latents: the VAE never
    runs in the loop).

    ``embeddings``/``target_norm``: the entries' input embeddings (n, d) and the pseudo-token's norm for a
    one-encoder family, or {encoder label: (n, d_e)} and {label: norm} with every :func:`text_encoders`
    label (one α, a pseudo-token in each encoder's own space). The coefficient MLP reads each entry's
    embeddings in every encoder side by side ((n, Σ d_e); for one encoder, (n, d) itself).
    ``validate(token)`` scores a pseudo-token, given in the form of ``embeddings`` ((d,), or {label:
    (d_e,)}) (higher is better; e.g. the mean similarity of its images to the concept's validation
    images); it is called at step 0, every ``config.eval_every`` steps and at the last step. Every module
    of the pipeline is frozen throughout (:func:`frozen`). Same arguments, same result (on CPU)."""
    from tqdm.auto import tqdm

    c = config
    dev = model.device
    if isinstance(embeddings, Mapping):
        emb = {k: e.to(dev) for k, e in embeddings.items()}
        feats = torch.cat(list(emb.values()), dim=1) if len(emb) > 1 else next(iter(emb.values()))
    else:
        emb = feats = embeddings.to(dev)
    n = feats.shape[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(c.seed)
        mlp = CoefficientMLP(feats.shape[1], c.hidden, *((feats.mean(0), feats.std(0)) if c.standardise and n > 1
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
            a = mlp(feats).float()
            tok = pseudo_tokens(a, emb, target_norm)
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
            alphas = mlp(feats)
            tokv = pseudo_tokens(alphas, emb, target_norm)
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
