"""``Condition``: a text condition made of several tensors that share a leading batch dimension.

Stable Diffusion 1.x/2.x condition the UNet on one tensor (the text encoder's hidden states, (B, L, D)),
and the methods pass that tensor around. Newer families need more: SDXL adds a pooled embedding and
"time ids", SD3 and Flux a pooled embedding, PixArt an attention mask. A ``Condition`` carries them
together and behaves like a tensor where the methods need it: ``shape`` (the hidden states'), indexing
and slicing by batch, ``expand``, ``to``, ``detach`` and ``torch.cat`` (through torch's
``__torch_function__`` protocol), so a method written for SD's tensor works unchanged.
"""
from __future__ import annotations

import torch


class Condition:
    """Tensors with a common batch dimension; ``main`` names the hidden states the denoiser attends to
    (its ``shape`` is the condition's shape). Integer and boolean tensors (masks) keep their dtype under
    ``to(dtype=...)``."""

    def __init__(self, main: str = "prompt_embeds", **tensors: torch.Tensor):
        if main not in tensors:
            raise ValueError(f"the main tensor {main!r} is not among {sorted(tensors)}")
        batch = {t.shape[0] for t in tensors.values()}
        if len(batch) != 1:
            raise ValueError(f"a condition's tensors must share their batch size, got {dict((k, tuple(v.shape)) for k, v in tensors.items())}")
        self.main = main
        self.tensors = dict(tensors)

    # -- tensor-like ------------------------------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.tensors[self.main].shape

    @property
    def device(self) -> torch.device:
        return self.tensors[self.main].device

    @property
    def dtype(self) -> torch.dtype:
        return self.tensors[self.main].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> "Condition":
        if isinstance(index, int):  # keep the batch dimension
            index = slice(index, index + 1 if index != -1 else None)
        return self._map(lambda t: t[index.to(t.device) if isinstance(index, torch.Tensor) else index])

    def __getattr__(self, name):
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        raise AttributeError(name)

    def expand(self, batch: int, *rest) -> "Condition":
        """Every tensor expanded to ``batch`` rows (from a batch of 1); ``rest`` (the main tensor's other
        sizes, as ``tensor.expand`` takes them) is accepted and ignored."""
        return self._map(lambda t: t.expand(batch, *t.shape[1:]))

    def repeat(self, times: int, *rest) -> "Condition":
        return self._map(lambda t: t.repeat(times, *([1] * (t.ndim - 1))))

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Condition":
        if isinstance(device, torch.dtype):
            device, dtype = None, device
        return self._map(lambda t: t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None))

    def detach(self) -> "Condition":
        return self._map(lambda t: t.detach())

    def float(self) -> "Condition":
        return self.to(dtype=torch.float32)

    def cpu(self) -> "Condition":
        return self.to("cpu")

    def _map(self, fn) -> "Condition":
        return Condition(self.main, **{k: fn(v) for k, v in self.tensors.items()})

    @classmethod
    def cat(cls, conditions) -> "Condition":
        conditions = list(conditions)
        keys = [sorted(c.tensors) for c in conditions]
        if any(k != keys[0] for k in keys):
            raise ValueError(f"cannot concatenate conditions with different parts: {keys}")
        return Condition(conditions[0].main, **{k: torch.cat([c.tensors[k] for c in conditions])
                                                for k in conditions[0].tensors})

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.cat and not kwargs.get("dim"):
            return cls.cat(args[0])
        return NotImplemented

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.tensors.items())
        return f"Condition({parts})"
