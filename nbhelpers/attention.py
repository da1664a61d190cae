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


class AttentionStore:
    """Running sum of cross-attention maps, (B, L, h, w) at latent resolution, over layers and calls.

    ``rows``: which batch rows of each UNet call to keep (None = all), set by the caller per call."""

    def __init__(self, latent_hw: tuple[int, int]):
        self.hw = tuple(latent_hw)
        self.total: torch.Tensor | None = None
        self.count = 0  # layer-maps added per row
        self.rows: torch.Tensor | slice | None = None
        self.layers: set[str] = set()

    def add(self, name: str, probs: torch.Tensor, spatial: tuple[int, int]):
        """probs: (B, N, L) head-averaged attention of N = h_l·w_l queries over L tokens."""
        if self.rows is not None:
            probs = probs[self.rows]
        b, n, L = probs.shape
        maps = probs.transpose(1, 2).reshape(b, L, *spatial).float()
        if spatial != self.hw:
            maps = F.interpolate(maps, size=self.hw, mode="bilinear", align_corners=False)
        self.total = maps.detach().cpu() if self.total is None else self.total + maps.detach().cpu()
        self.count += 1
        self.layers.add(name)

    def token_maps(self) -> torch.Tensor:
        """Mean map per token, (B, L, h, w)."""
        if self.total is None:
            raise RuntimeError("no cross-attention was captured; run the UNet inside capture_cross_attention")
        return self.total / self.count


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
                probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scale, dim=-1)
                self.store.add(self.name, probs.mean(1), spatial)
        return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


@contextlib.contextmanager
def capture_cross_attention(unet, store: AttentionStore):
    """Within the block, every cross-attention layer of ``unet`` adds its maps to ``store``."""
    originals = dict(unet.attn_processors)
    wrapped = {name: (_CaptureProcessor(p, store, name) if ".attn2." in name else p) for name, p in originals.items()}
    unet.set_attn_processor(wrapped)
    try:
        yield store
    finally:
        unet.set_attn_processor(originals)


@torch.no_grad()
def word_attention_maps(model, image, prompt: str, words: list[str] | None = None, n: int = 8, seed: int = 0,
                        sampler=None) -> dict[str, np.ndarray]:
    """Cross-attention map (h, w) of each word of ``prompt`` for a given image: the UNet runs on
    ``n`` noisy versions of the image's latent at log-SNRs drawn like the information estimator's,
    and maps are averaged over layers, heads, noise levels and the word's sub-word tokens."""
    from .immse import LogSNRSampler, stratified_uniforms
    from .info import as_latent

    tp = model.tokenize(prompt)
    words = list(dict.fromkeys(w.text for w in tp.words)) if words is None else list(words)
    x = as_latent(model, image)
    sampler = sampler or LogSNRSampler.for_model(model)
    g = torch.Generator().manual_seed(int(seed))
    a, _ = sampler.sample(stratified_uniforms(n, g))
    eps = torch.randn((n, *x.shape[1:]), generator=g)
    z = torch.sigmoid(a).sqrt().float().view(-1, 1, 1, 1) * x + torch.sigmoid(-a).sqrt().float().view(-1, 1, 1, 1) * eps
    store = AttentionStore(x.shape[-2:])
    with capture_cross_attention(model.pipe.unet, store):
        model.eps(z, a, model.condition(prompt))
    tok = store.token_maps().mean(0)  # (L, h, w), averaged over noise levels
    return {w: tok[tp.token_indices(w)].mean(0).numpy() for w in words}
