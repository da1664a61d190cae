"""Tiny randomly initialised pipelines of every supported family's layout (Stable Diffusion, SDXL, SD3,
Flux dev/schnell, PixArt-Σ), for tests of code paths that must not depend on trained weights
(v-prediction, other image sizes, loading from a folder, every architecture family). They use the toy
world's locally built tokenizers, CLIP BPE and T5 Unigram (no tokenizer can be downloaded here), which is
why they live with the world. Each is the real diffusers pipeline class with a small config: a few
hundred thousand parameters, a forward pass in milliseconds on a CPU."""
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


TINY_FAMILIES = ("sd", "sdxl", "sd3", "flux-dev", "flux-schnell", "pixart")


def _clip(tok, hidden: int = 32, projection: bool = False, layers: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=tok.model_max_length, projection_dim=hidden,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(tok, d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=1,
                                   num_heads=2, dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                   decoder_start_token_id=tok.pad_token_id))


def _vae(image_size: int, latent_channels: int = 4, flow: bool = False):
    from diffusers import AutoencoderKL

    extra = dict(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False) if flow else {}
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, block_out_channels=(8, 16),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         layers_per_block=1, norm_num_groups=8, sample_size=image_size, **extra)


def tiny_family_pipeline(family: str = "sd", image_size: int = 32, seed: int = 0, prediction_type: str = "epsilon"):
    """A tiny random pipeline of ``family`` (one of :data:`TINY_FAMILIES`): the real diffusers class, the
    world's tokenizers (CLIP 24 tokens, T5 32 tokens), a VAE with a 2× downsampling, latents 16×16 for
    32-px images."""
    from ..model import quiet_transformers

    if family == "sd":
        return tiny_pipeline(prediction_type, image_size, seed)
    with quiet_transformers():
        import diffusers as d
    from .tokenizer import build_t5_tokenizer, build_tokenizer

    torch.manual_seed(seed)
    side = image_size // 2
    if family == "sdxl":
        tok, tok2 = build_tokenizer(24), build_tokenizer(24)
        unet = d.UNet2DConditionModel(sample_size=side, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                      layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                      up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                      use_linear_projection=True, addition_embed_type="text_time",
                                      addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                      projection_class_embeddings_input_dim=8 * 6 + 32, cross_attention_dim=64,
                                      norm_num_groups=8)
        sched = d.EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                         beta_schedule="scaled_linear", prediction_type=prediction_type,
                                         timestep_spacing="leading", steps_offset=1)
        return d.StableDiffusionXLPipeline(vae=_vae(image_size), text_encoder=_clip(tok), text_encoder_2=_clip(tok2, projection=True),
                                           tokenizer=tok, tokenizer_2=tok2, unet=unet, scheduler=sched,
                                           force_zeros_for_empty_prompt=True)
    if family == "sd3":
        tok, tok2, tok3 = build_tokenizer(24), build_tokenizer(24), build_t5_tokenizer(32)
        transformer = d.SD3Transformer2DModel(sample_size=side, patch_size=2, in_channels=4, num_layers=2,
                                              attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                              joint_attention_dim=64, pooled_projection_dim=64, out_channels=4)
        return d.StableDiffusion3Pipeline(transformer=transformer, scheduler=d.FlowMatchEulerDiscreteScheduler(shift=3.0),
                                          vae=_vae(image_size, flow=True), text_encoder=_clip(tok, projection=True),
                                          tokenizer=tok, text_encoder_2=_clip(tok2, projection=True), tokenizer_2=tok2,
                                          text_encoder_3=_t5(tok3, 64), tokenizer_3=tok3)
    if family in ("flux-dev", "flux-schnell"):
        tok, tok2 = build_tokenizer(24), build_t5_tokenizer(32)
        transformer = d.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                               pooled_projection_dim=32, guidance_embeds=family == "flux-dev",
                                               axes_dims_rope=(4, 4, 8))
        sched = d.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=family == "flux-dev",
                                                  base_shift=0.5, max_shift=1.15)
        return d.FluxPipeline(scheduler=sched, vae=_vae(image_size, flow=True), text_encoder=_clip(tok), tokenizer=tok,
                              text_encoder_2=_t5(tok2, 32), tokenizer_2=tok2, transformer=transformer)
    if family == "pixart":
        tok = build_t5_tokenizer(32)
        transformer = d.PixArtTransformer2DModel(sample_size=side, num_layers=2, patch_size=2, attention_head_dim=8,
                                                 num_attention_heads=2, caption_channels=32, in_channels=4,
                                                 cross_attention_dim=16, out_channels=8, attention_bias=True,
                                                 activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                                 norm_type="ada_norm_single", norm_elementwise_affine=False,
                                                 norm_eps=1e-6, use_additional_conditions=False)
        sched = d.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                                              beta_schedule="linear")
        return d.PixArtSigmaPipeline(tokenizer=tok, text_encoder=_t5(tok, 32), vae=_vae(image_size),
                                     transformer=transformer, scheduler=sched)
    raise ValueError(f"family={family!r} is not one of {TINY_FAMILIES}")


def save_tiny_pipeline(folder: str | Path, family: str = "sd", **kwargs) -> Path:
    folder = Path(folder)
    pipe = tiny_family_pipeline(family, **kwargs) if family != "sd" else tiny_pipeline(**kwargs)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
