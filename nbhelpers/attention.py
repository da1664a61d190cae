"""Cross-attention maps through diffusers' attention-processor API (after DAAM, Tang et al. 2023).

:func:`capture_cross_attention` swaps every cross-attention processor (``attn2``) of a UNet for a
wrapper that computes the attention probabilities ``softmax(q kᵀ · scale)`` for the rows it is told
to keep (the conditional ones), aggregates them on the fly into a :class:`AttentionStore`, and then
calls the original processor (SDPA by default), so the UNet's outputs are unchanged. The original
processors are restored on exit, also after an error. Self-attention layers are left alone.

Aggregation (DAAM): each layer's head-averaged map is upsampled bilinearly to the latent grid and
summed over layers and calls; a word's map is the mean over its sub-word tokens.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F

from .validate import validated


class AttentionBudgetError(MemoryError):
    """Keeping the requested per-step/per-layer/per-head maps would exceed the memory budget."""


class AttentionStore:
    """Cross-attention maps at latent resolution, aggregated on the fly.

    Always kept: the running sum over layers, heads and calls, (B, L, h, w) (``token_maps``).
    Kept only where asked, since they multiply memory:
    - ``keep_steps``: per-step maps (B, L, h, w) for these step indices ("all" or a list), summed over
      layers and heads (``step_maps``); the step counter advances with each UNet call when the store
      is used with :func:`capture_cross_attention` (``count_calls=True``);
    - ``keep_layers``: per-layer maps (summed over steps), ``layer_maps``;
    - ``keep_heads``: per-layer, per-head maps (B, heads, L, h, w) (summed over steps), ``head_maps``.
    ``budget_mb`` bounds the kept maps; exceeding it raises :class:`AttentionBudgetError` at the first
    step that would, with advice. ``rows``: which batch rows of each UNet call to keep (None = all);
    with ``n_prompts`` set, a call with 2·n_prompts rows (classifier-free guidance, unconditional
    rows first as diffusers orders them) keeps the conditional half only."""

    def __init__(self, latent_hw: tuple[int, int], keep_steps="none", keep_layers: bool = False,
                 keep_heads: bool = False, budget_mb: float = 512.0, n_prompts: int | None = None):
        self.hw = tuple(latent_hw)
        self.total: torch.Tensor | None = None
        self.count = 0  # layer-maps added per row
        self.rows: torch.Tensor | slice | None = None
        self.layers: set[str] = set()
        self.keep_steps = keep_steps
        self.keep_layers = keep_layers
        self.keep_heads = keep_heads
        self.budget_bytes = budget_mb * 2**20
        self.n_prompts = n_prompts
        self.step = 0
        self.calls = 0
        self._steps: dict[int, list] = {}  # step -> [sum, count]
        self._layers: dict[str, list] = {}
        self._heads: dict[str, list] = {}

    # -- bookkeeping ---------------------------------------------------------------------------------
    def begin_call(self, batch: int) -> None:
        """Called before each UNet call: sets the step index and the rows to keep."""
        self.step = self.calls
        self.calls += 1
        if self.n_prompts is not None:
            self.rows = slice(self.n_prompts, 2 * self.n_prompts) if batch == 2 * self.n_prompts else None

    def _keeps_step(self, step: int) -> bool:
        if isinstance(self.keep_steps, str):
            return self.keep_steps == "all"
        return step in set(self.keep_steps or ())

    def kept_bytes(self) -> int:
        tensors = [v[0] for d in (self._steps, self._layers, self._heads) for v in d.values()]
        return sum(t.numel() * t.element_size() for t in tensors)

    def _accumulate(self, table: dict, key, maps: torch.Tensor) -> None:
        if key in table:
            table[key][0] += maps
            table[key][1] += 1
            return
        if self.kept_bytes() + maps.numel() * maps.element_size() > self.budget_bytes:
            raise AttentionBudgetError(
                f"keeping attention maps per step/layer/head would exceed budget_mb={self.budget_bytes / 2**20:.0f}; "
                "keep fewer steps (keep_steps=[...]), set keep_heads=False or keep_layers=False, use fewer "
                "prompts per call, or raise budget_mb")
        table[key] = [maps.clone(), 1]

    def add(self, name: str, probs: torch.Tensor, spatial: tuple[int, int]):
        """probs: (B, heads, N, L) or head-averaged (B, N, L) attention of N = h_l·w_l queries over
        L tokens."""
        if self.rows is not None:
            probs = probs[self.rows]
        probs = probs.detach().float()
        heads = probs if probs.ndim == 4 else None
        mean = probs.mean(1) if probs.ndim == 4 else probs
        b, n, L = mean.shape
        maps = self._to_latent(mean.transpose(1, 2).reshape(b, L, *spatial)).cpu()
        self.total = maps if self.total is None else self.total + maps
        self.count += 1
        self.layers.add(name)
        if self._keeps_step(self.step):
            self._accumulate(self._steps, self.step, maps)
        if self.keep_layers:
            self._accumulate(self._layers, name, maps)
        if self.keep_heads and heads is not None:
            hm = heads.transpose(2, 3).reshape(b * heads.shape[1], L, *spatial)
            hm = self._to_latent(hm).reshape(b, heads.shape[1], L, *self.hw).cpu()
            self._accumulate(self._heads, name, hm)

    def _to_latent(self, maps: torch.Tensor) -> torch.Tensor:
        if tuple(maps.shape[-2:]) != self.hw:
            maps = F.interpolate(maps, size=self.hw, mode="bilinear", align_corners=False)
        return maps

    # -- results -------------------------------------------------------------------------------------
    def token_maps(self) -> torch.Tensor:
        """Mean map per token over everything captured, (B, L, h, w)."""
        if self.total is None:
            raise RuntimeError("no cross-attention was captured; run the UNet inside capture_cross_attention")
        return self.total / self.count

    def step_maps(self) -> dict[int, torch.Tensor]:
        """{step: mean map per token at that step, (B, L, h, w)} for the kept steps."""
        return {k: v[0] / v[1] for k, v in sorted(self._steps.items())}

    def layer_maps(self) -> dict[str, torch.Tensor]:
        """{layer name: mean map per token in that layer, (B, L, h, w)} (with ``keep_layers``)."""
        return {k: v[0] / v[1] for k, v in self._layers.items()}

    def head_maps(self) -> dict[str, torch.Tensor]:
        """{layer name: mean map per head and token, (B, heads, L, h, w)} (with ``keep_heads``)."""
        return {k: v[0] / v[1] for k, v in self._heads.items()}


class _CaptureProcessor:
    def __init__(self, original, store: AttentionStore, name: str):
        self.original = original
        self.store = store
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if encoder_hidden_states is not None:
            with torch.no_grad():
                hs = hidden_states
                if hs.ndim == 4:
                    b, c, h, w = hs.shape
                    hs = hs.view(b, c, h * w).transpose(1, 2)
                    spatial = (h, w)
                else:
                    side = int(round(hs.shape[1] ** 0.5))
                    spatial = (side, hs.shape[1] // side)
                if attn.group_norm is not None:
                    hs = attn.group_norm(hs.transpose(1, 2)).transpose(1, 2)
                ehs = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
                q = attn.to_q(hs)
                k = attn.to_k(ehs)
                b, n, inner = q.shape
                d = inner // attn.heads
                q = q.view(b, n, attn.heads, d).transpose(1, 2)
                k = k.view(b, -1, attn.heads, d).transpose(1, 2)
                scores = (q.float() @ k.float().transpose(-1, -2)) * attn.scale
                if attention_mask is not None:  # PixArt masks T5's padding, as the processor does
                    mask = attn.prepare_attention_mask(attention_mask, k.shape[2], b)
                    scores = scores + mask.view(b, -1, *mask.shape[1:]).float()
                probs = torch.softmax(scores, dim=-1)
                self.store.add(self.name, probs if self.store.keep_heads else probs.mean(1), spatial)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


def _denoiser(model_or_denoiser):
    """(denoiser module, the model if it is an MMDiT with joint attention else None)."""
    family = getattr(model_or_denoiser, "family", None)
    if family is None:
        return model_or_denoiser, None
    return model_or_denoiser.denoiser, (model_or_denoiser if family.joint_attention else None)


@contextlib.contextmanager
def capture_cross_attention(unet, store: AttentionStore, count_calls: bool = False, layers: str | None = None):
    """Within the block, every text→image attention layer of ``unet`` (a model, or a UNet/DiT module) — or
    those whose name contains ``layers``, e.g. "up_blocks" — adds its maps to ``store``; the other layers
    keep their processors (SDPA by default). ``count_calls=True`` advances ``store.step`` with each
    denoiser call (one call per denoising step in a pipeline) and picks the conditional rows (see
    :class:`AttentionStore`). Cross-attention (``attn2``: SD, SDXL, PixArt) is read by a wrapping
    processor; the joint attention of MMDiTs (SD3, Flux) by :mod:`nbhelpers.joint_attention`. Through
    :mod:`nbhelpers.hooks`: the original processors are restored on exit, also after an error."""
    from .hooks import attention_processors, cross_attention_layers, module_hooks

    denoiser, joint = _denoiser(unet)
    if joint is not None:
        from .joint_attention import capture_joint_attention

        with capture_joint_attention(joint, store, count_calls, layers):
            yield store
        return
    names = cross_attention_layers(denoiser, layers)
    pre = (lambda mod, args, kwargs: store.begin_call(
        (args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))).shape[0])) if count_calls else None
    with attention_processors(denoiser, lambda name, p: _CaptureProcessor(p, store, name), names), \
            module_hooks(denoiser, forward_pre=pre, with_kwargs=True):
        yield store

@validated
@torch.no_grad()
def word_attention_maps(model, image, prompt: str, words: list[str] | None = None, n: int = 8, seed: int = 0,
                        sampler=None) -> dict[str, np.ndarray]:
    """Cross-attention map (h, w) of each word of ``prompt`` for a given image: the UNet runs on
    ``n`` noisy versions of the image's latent at log-SNRs drawn like the information estimator's,
    and maps are averaged over layers, heads, noise levels and the word's sub-word tokens."""
    from .immse import LogSNRSampler, noisy_copies

    tp = model.tokenize(prompt)
    words = list(dict.fromkeys(w.text for w in tp.words)) if words is None else list(words)
    x = model.latent_of(image)
    z, a = noisy_copies(x, n, seed, sampler or LogSNRSampler.for_model(model))
    store = AttentionStore(x.shape[-2:])
    with capture_cross_attention(model, store):
        model.eps(z, a, model.condition(prompt))
    tok = store.token_maps().mean(0)  # (L, h, w), averaged over noise levels
    return {w: tok[model.word_positions(prompt, w)].mean(0).numpy() for w in words}


class _RecordingProcessor:
    """Diffusers' plain attention (``AttnProcessor``'s computation: ``attn.get_attention_scores``, then
    the weighted sum of values) that appends each call's attention probabilities, inside the autograd
    graph, to ``recorded``."""

    def __init__(self, recorded: list):
        self.recorded = recorded

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(attn.head_to_batch_dim(query), key, attention_mask)
        self.recorded.append(probs)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextlib.contextmanager
def attention_probs_with_grad(unet, layers: str | None = None):
    """Within the block, the cross-attention layers of ``unet`` (those whose name contains
    ``layers``, all by default) compute plain attention (diffusers' ``AttnProcessor`` math) and record
    their attention probabilities **inside the autograd graph**, for gradient-weighted relevance.
    Yields {layer name: [probs (B·heads, N, L), one per UNet call]}. Other layers keep their
    processors; everything is restored on exit, also after an error (through :mod:`nbhelpers.hooks`)."""
    from .hooks import attention_processors, cross_attention_layers

    unet, joint = _denoiser(unet)
    if joint is not None:
        from .joint_attention import joint_attention_probs_with_grad

        with joint_attention_probs_with_grad(joint, layers) as recorded:
            yield recorded
        return
    names = cross_attention_layers(unet, layers)
    recorded: dict[str, list[torch.Tensor]] = {n.removesuffix(".processor"): [] for n in names}
    with attention_processors(unet, lambda name, p: _RecordingProcessor(recorded[name.removesuffix(".processor")]),
                              names):
        yield recorded
