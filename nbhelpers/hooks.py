"""One hook layer: hook points on a diffusers denoiser, through the libraries' own mechanisms only.

- :func:`module_hooks`: torch forward / forward-pre hooks on a module (activations, gradients, inputs);
- :func:`attention_processors`: diffusers' attention-processor API (capture or change attention);
- the pipeline's ``callback_on_step_end`` for per-step work during generation (see ``model.py``);
- for MMDiTs' joint attention, a ``torch.overrides.TorchFunctionMode`` that sees the attention kernel's
  call inside the layers forward hooks mark (:mod:`nbhelpers.joint_attention`).

Nothing here assigns to a library object's attribute (no monkey-patching). Every context restores
exactly what it found — the same processor objects, no hook left behind — also after an error
(``tests/test_hooks.py``). Each architecture family names its hook points
(``model.family.text_attention_layers()``): the ``attn2`` modules for UNets and PixArt
(:func:`cross_attention_layers`), the joint attention of each block for SD3 and Flux.
"""
from __future__ import annotations

import contextlib
from typing import Callable

from .validate import ArgumentError


def cross_attention_layers(denoiser, layers: str | None = None) -> list[str]:
    """Processor names of the text→image (cross-) attention layers of a UNet (names containing
    ``.attn2.``), restricted to those containing ``layers`` (e.g. "up_blocks") when given. Raises a
    ValueError naming the available layers when nothing matches."""
    names = [n for n in denoiser.attn_processors if ".attn2." in n]
    chosen = [n for n in names if layers is None or layers in n]
    if not chosen:
        raise ArgumentError(f"no cross-attention layer matches layers={layers!r}; names look like "
                         f"{names[0] if names else 'none (this network has no attn2 layers)'!r}")
    return chosen


@contextlib.contextmanager
def attention_processors(denoiser, replace: Callable[[str, object], object], names: list[str]):
    """Within the block, the attention processor of every layer in ``names`` is ``replace(name,
    original)``; the others keep theirs. On exit every layer gets its original processor object back."""
    originals = dict(denoiser.attn_processors)
    chosen = set(names)
    denoiser.set_attn_processor({n: (replace(n, p) if n in chosen else p) for n, p in originals.items()})
    try:
        yield originals
    finally:
        denoiser.set_attn_processor(originals)


@contextlib.contextmanager
def module_hooks(module, forward: Callable | None = None, forward_pre: Callable | None = None,
                 with_kwargs: bool = False):
    """Within the block, ``forward(module, args, [kwargs,] output)`` and/or ``forward_pre(module, args,
    [kwargs])`` run around every call of ``module`` (torch's ``register_forward_hook`` /
    ``register_forward_pre_hook``); both are removed on exit."""
    handles = []
    try:
        if forward_pre is not None:
            handles.append(module.register_forward_pre_hook(forward_pre, with_kwargs=with_kwargs))
        if forward is not None:
            handles.append(module.register_forward_hook(forward, with_kwargs=with_kwargs))
        yield handles
    finally:
        for h in handles:
            h.remove()
