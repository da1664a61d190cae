"""Tiny randomly initialised pipelines of Stable Diffusion's layout, for tests of code paths that
must not depend on trained weights (v-prediction, other image sizes, loading from a folder). They use
the toy world's locally built tokenizer (no tokenizer can be downloaded here), which is why they live
with the world."""
from __future__ import annotations

from pathlib import Path

import torch


def tiny_pipeline(prediction_type: str = "epsilon", image_size: int = 32, seed: int = 0):
    """A ``StableDiffusionPipeline`` with random weights (a few hundred thousand parameters), the toy
    world's tokenizer and SD's scaled-linear DDIM scheduler."""
    from ..model import quiet_transformers

    with quiet_transformers():
        from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import build_tokenizer

    torch.manual_seed(seed)
    tok = build_tokenizer(24)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, norm_num_groups=8, sample_size=image_size)
    unet = UNet2DConditionModel(sample_size=image_size // 2, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, max_position_embeddings=24, projection_dim=32,
                                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                        pad_token_id=tok.pad_token_id))
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def save_tiny_pipeline(folder: str | Path, **kwargs) -> Path:
    folder = Path(folder)
    tiny_pipeline(**kwargs).save_pretrained(folder, safe_serialization=True)
    return folder
