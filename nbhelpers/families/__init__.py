"""Architecture families: one small unit per diffusers pipeline class (see :mod:`.base`).

=========  ==============================  ===========  ==========================================
family     pipeline                        noise        text → image attention (hook points)
=========  ==============================  ===========  ==========================================
sd         StableDiffusionPipeline         DDPM ε / v   ``*.attn2`` (cross-attention)
sdxl       StableDiffusionXLPipeline       DDPM ε / v   ``*.attn2``
sd3        StableDiffusion3Pipeline        flow         ``transformer_blocks.N.attn`` (joint)
flux       FluxPipeline                    flow         joint double- and single-stream blocks
pixart     PixArtSigma/AlphaPipeline       DDPM ε       ``transformer_blocks.N.attn2``
=========  ==============================  ===========  ==========================================
"""
from __future__ import annotations

from .base import Family, TextEncoderSlot
from .condition import Condition
from .flux import FluxFamily
from .noise import DiscreteVP, FlowMatching
from .pixart import PixArtFamily
from .sd import StableDiffusionFamily
from .sd3 import StableDiffusion3Family
from .sdxl import StableDiffusionXLFamily

FAMILIES: tuple[type[Family], ...] = (StableDiffusionFamily, StableDiffusionXLFamily, StableDiffusion3Family,
                                      FluxFamily, PixArtFamily)


def family_class(pipeline_class_name: str) -> type[Family] | None:
    """The family for a diffusers pipeline class name (``model_index.json``'s ``_class_name``), or None."""
    for fam in FAMILIES:
        if pipeline_class_name in fam.pipeline_classes:
            return fam
    return None


def supported_pipelines() -> list[str]:
    return [c for fam in FAMILIES for c in fam.pipeline_classes]


__all__ = ["Family", "TextEncoderSlot", "Condition", "DiscreteVP", "FlowMatching", "FAMILIES", "family_class",
           "supported_pipelines", "StableDiffusionFamily", "StableDiffusionXLFamily", "StableDiffusion3Family",
           "FluxFamily", "PixArtFamily"]
