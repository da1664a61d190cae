"""Text→image attention inside the joint attention of MMDiTs (SD3/3.5, Flux), read without replacing
any of the library's processors.

In an MMDiT every block attends over one sequence of image *and* text tokens (SD3: image first; Flux:
text first; Flux's single-stream blocks get the joined sequence directly). A word's "cross-attention"
is the block of that joint softmax with image queries and the word's text keys: ``softmax(q kᵀ/√d)``
over *all* keys, restricted to image rows and text columns, shape (B, heads, N_image, L_text). It is
not renormalised over text: the rest of each row's mass went to image keys.

The processors (``JointAttnProcessor2_0``, ``FluxAttnProcessor``) end in
``torch.nn.functional.scaled_dot_product_attention`` with ``q, k, v`` of shape (B, heads, S, d). A
:class:`torch.overrides.TorchFunctionMode` sees that call while forward hooks on the chosen attention
modules say which layer is running (both torch's own extension mechanisms; nothing is assigned to a
library object). Two uses:

- :func:`capture_joint_attention` (no gradient): the probabilities are computed on the side, in
  chunks of image queries, and the library's own attention then runs unchanged — the outputs are
  bit-identical;
- :func:`joint_attention_probs_with_grad`: the attention is computed explicitly as ``P v`` with the
  image→text block of ``P`` a tensor of the autograd graph, recorded as (B·heads, N_image, L_text) for
  gradient-weighted relevance (the same layout as ``attention_probs_with_grad`` for UNets). Memory is
  O(B·heads·S²) per layer: restrict ``layers`` on large models.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .validate import ArgumentError


class _SDPATap(TorchFunctionMode):
    """Routes ``scaled_dot_product_attention`` calls made inside a tapped layer to ``handler``."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler
        self.layer: str | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and self.layer is not None:
            names = ("query", "key", "value")  # positional, or by keyword (diffusers' attention dispatch)
            q, k, v = list(args[:3]) + [kwargs.pop(n) for n in names[len(args[:3]):]]
            return self.handler(self.layer, q, k, v, *args[3:], **kwargs)
        return func(*args, **kwargs)


def joint_layers(model, layers: str | None = None) -> list[str]:
    """Module names of the joint-attention layers of ``model`` whose name contains ``layers``."""
    names = [n.removesuffix(".processor") for n in model.family.text_attention_layers()]
    chosen = [n for n in names if layers is None or layers in n]
    if not chosen:
        raise ArgumentError(f"no joint-attention layer matches layers={layers!r}; names look like {names[0]!r}")
    return chosen


def _blocks(model, s: int):
    """(image rows, text columns) slices of a joint sequence of length ``s``."""
    rows, cols = model.family.token_grid()
    n = rows * cols
    if model.family.joint_layout == "image_first":
        return slice(0, n), slice(n, s)
    return slice(s - n, s), slice(0, s - n)


def _scores(q, k, attn_mask, scale):
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = (q.float() @ k.float().transpose(-1, -2)) * scale
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask.float()
    return s


def _mask_rows(mask, img: slice, start: int, chunk: int):
    """The rows of an attention mask for image queries ``start .. start + chunk`` (broadcast masks as they are)."""
    if mask is None or mask.shape[-2] == 1:
        return mask
    return mask[..., img, :][..., start : start + chunk, :]


@contextlib.contextmanager
def _tapped(model, names: list[str], handler, count_calls_store=None):
    from .hooks import module_hooks

    tap = _SDPATap(handler)
    modules = dict(model.denoiser.named_modules())

    def enter(name):
        return lambda module, args: setattr(tap, "layer", name)

    def leave(module, args, output):
        tap.layer = None

    with contextlib.ExitStack() as stack:
        for name in names:
            stack.enter_context(module_hooks(modules[name], forward_pre=enter(name), forward=leave))
        if count_calls_store is not None:
            store = count_calls_store
            stack.enter_context(module_hooks(model.denoiser, with_kwargs=True, forward_pre=lambda mod, args, kwargs:
                                             store.begin_call((args[0] if args else kwargs["hidden_states"]).shape[0])))
        stack.enter_context(tap)
        yield tap


@contextlib.contextmanager
def capture_joint_attention(model, store, count_calls: bool = False, layers: str | None = None,
                            chunk: int = 1024):
    """Within the block, every joint-attention layer of ``model`` (or those whose name contains
    ``layers``) adds its image→text attention (B, heads, N, L) to ``store`` (an
    :class:`nbhelpers.attention.AttentionStore`), computed in chunks of ``chunk`` image queries; the
    layers' outputs are unchanged. ``count_calls`` advances the store's step with each denoiser call."""
    grid = model.family.token_grid()

    def handler(layer, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        with torch.no_grad():
            img, txt = _blocks(model, q.shape[-2])
            parts = []
            qi = q[:, :, img]
            for i in range(0, qi.shape[2], chunk):
                s = _scores(qi[:, :, i : i + chunk], k, _mask_rows(attn_mask, img, i, chunk), scale)
                parts.append(torch.softmax(s, dim=-1)[..., txt])
            probs = torch.cat(parts, dim=2)
            store.add(layer, probs if store.keep_heads else probs.mean(1), grid)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                              scale=scale, **kw)

    with _tapped(model, joint_layers(model, layers), handler, store if count_calls else None):
        yield store


@contextlib.contextmanager
def joint_attention_probs_with_grad(model, layers: str | None = None):
    """Within the block, the joint-attention layers of ``model`` compute attention explicitly with the
    image→text block of the probabilities inside the autograd graph. Yields {layer name: [probs
    (B·heads, N_image, L_text), one per denoiser call]} (the layout of
    :func:`nbhelpers.attention.attention_probs_with_grad`)."""
    names = joint_layers(model, layers)
    recorded: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def handler(layer, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        img, txt = _blocks(model, q.shape[-2])
        p = torch.softmax(_scores(q, k, attn_mask, scale), dim=-1)
        flat = p[:, :, img, txt].reshape(-1, *p[:, :, img, txt].shape[2:])  # (B·heads, N, L): recorded ...
        p_it = flat.view(*p.shape[:2], *flat.shape[1:])  # ... and used below, so gradients reach it
        p_ii = p[:, :, img, (slice(txt.stop, None) if txt.start == 0 else slice(0, txt.start))]
        image_rows = torch.cat([p_it, p_ii], -1) if txt.start == 0 else torch.cat([p_ii, p_it], -1)
        full = torch.cat([image_rows, p[:, :, txt]], 2) if img.start == 0 else torch.cat([p[:, :, txt], image_rows], 2)
        recorded[layer].append(flat)
        return (full @ v.float()).to(v.dtype)

    with _tapped(model, names, handler):
        yield recorded
