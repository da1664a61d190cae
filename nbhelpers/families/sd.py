"""Stable Diffusion 1.x/2.x: one CLIP text encoder, a UNet with cross-attention (``attn2``), DDPM
noise, ε or v prediction. The condition is the text encoder's last hidden states (B, 77, D), a
plain tensor."""
from __future__ import annotations

from .base import Family


class StableDiffusionFamily(Family):
    name = "sd"
    title = "Stable Diffusion 1.x/2.x (UNet, DDPM, ε or v)"
    pipeline_classes = ("StableDiffusionPipeline",)
