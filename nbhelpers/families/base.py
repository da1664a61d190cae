"""What every architecture family supplies to :class:`nbhelpers.model.DiffusionModel`.

A family is a small unit over one diffusers pipeline class. It says how to turn prompts into the
denoiser's condition (and which condition is the *null* one), how to run the denoiser at a real
log-SNR and read ε from its output (through :mod:`nbhelpers.families.noise`), how latents are laid
out for the pipeline, and which attention layers carry text→image attention (its hook points).
Everything else (the estimators, maps, saliency, audits) is written once against
:class:`~nbhelpers.model.DiffusionModel`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..text import TokenizedPrompt, tokenize


@dataclass(frozen=True)
class TextEncoderSlot:
    """One tokenizer/text encoder of a family: ``label`` (e.g. "CLIP-L", "T5"), the tokenizer, the
    number of tokens the pipeline gives it, and ``offset``: where its tokens start in the denoiser's
    text sequence (None when the denoiser never attends to its tokens, e.g. a pooled-only encoder)."""

    label: str
    tokenizer: object
    max_length: int
    offset: int | None


class Family:
    """Base class: the Stable Diffusion 1.x/2.x defaults; subclasses override what differs."""

    name = "sd"
    title = "Stable Diffusion 1.x/2.x"
    pipeline_classes: tuple[str, ...] = ()
    denoiser_attr = "unet"
    #: how the family's null (unconditional) condition is made, for the README and ``repr``
    null_condition_doc = "the empty prompt through the text encoder (the pipeline's negative prompt)"

    def __init__(self, pipe, image_size: int | None = None):
        self.pipe = pipe
        self.noise = self.make_noise(pipe.scheduler)
        self.vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        self.image_size = int(image_size or self.default_image_size())
        if self.image_size % (self.vae_scale * self.patch_multiple()) != 0:
            raise ValueError(f"image_size={self.image_size} must be a multiple of {self.vae_scale * self.patch_multiple()} "
                             f"for {self.title}")
        side = self.image_size // self.vae_scale
        self.latent_shape = (self.latent_channels(), side, side)

    # -- construction --------------------------------------------------------------------------------
    def make_noise(self, scheduler):
        from .noise import DiscreteVP

        return DiscreteVP(scheduler)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_attr)

    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels)

    def default_image_size(self) -> int:
        return int(self.denoiser.config.sample_size) * self.vae_scale

    def patch_multiple(self) -> int:
        """The latent side must be a multiple of this (a DiT's patch size; Flux packs 2×2)."""
        return 1

    # -- text ----------------------------------------------------------------------------------------
    def encoders(self) -> list[TextEncoderSlot]:
        """The family's tokenizers, the one whose words the methods index first."""
        tok = self.pipe.tokenizer
        return [TextEncoderSlot("CLIP", tok, int(tok.model_max_length), 0)]

    @property
    def tokenizer(self):
        return self.encoders()[0].tokenizer

    def tokenize(self, prompt: str) -> TokenizedPrompt:
        """The prompt in the first encoder's tokens (raises if any encoder the denoiser attends to would
        truncate it)."""
        slots = self.encoders()
        for slot in slots[1:]:
            if slot.offset is not None:
                tokenize(slot.tokenizer, prompt, slot.max_length)
        return tokenize(slots[0].tokenizer, prompt, slots[0].max_length)

    def word_positions(self, prompt: str, word: str, occurrence: int | None = None) -> list[int]:
        """Columns of ``word`` in the denoiser's text sequence, over every encoder it attends to."""
        cols: list[int] = []
        for slot in self.encoders():
            if slot.offset is not None:
                tp = tokenize(slot.tokenizer, prompt, slot.max_length)
                cols += [slot.offset + i for i in tp.token_indices(word, occurrence)]
        return sorted(set(cols))

    def encode(self, prompts: list[str], device, dtype):
        """The condition for ``prompts`` (batch len(prompts))."""
        tok = self.pipe.tokenizer
        ids = tok(prompts, padding="max_length", max_length=int(tok.model_max_length), truncation=True,
                  return_tensors="pt").input_ids.to(device)
        return self.pipe.text_encoder(ids)[0].to(dtype)

    def null(self, device, dtype):
        """The null (unconditional) condition, batch 1."""
        return self.encode([""], device, dtype)

    # -- the denoiser -----------------------------------------------------------------------------------
    def net_call(self, z_net: torch.Tensor, t_net: torch.Tensor, cond) -> torch.Tensor:
        """The network's raw output (B, C, h, w) at its own input ``z_net`` and timestep ``t_net`` (B,)."""
        return self.denoiser(z_net, t_net, encoder_hidden_states=cond).sample

    def eps(self, z: torch.Tensor, logsnr: torch.Tensor, cond) -> torch.Tensor:
        """ε̂ (float32, like ``z``) at VP latents ``z`` (B, C, h, w) and log-SNR ``logsnr`` (B,)."""
        s = self.noise.scale(logsnr).to(z.device, z.dtype).view(-1, 1, 1, 1)
        z_net = z * s
        t_net = self.noise.timestep_of(logsnr).to(z.device, torch.float32)
        out = self.net_call(z_net, t_net, cond).float()
        return self.noise.to_eps(out, z_net.float(), logsnr)

    # -- what the pipeline's own loop sees (generation, trajectories) -------------------------------------
    def logsnr_of_net_timestep(self, t_net) -> float:
        """log-SNR of the timestep value the pipeline passes to the denoiser."""
        return float(self.noise.logsnr_of(float(torch.as_tensor(t_net).reshape(-1)[0])))

    def net_input_latents(self, hidden: torch.Tensor) -> torch.Tensor:
        """The denoiser's input as (B, C, h, w) network latents (unpacks packed families)."""
        return hidden

    def net_output_latents(self, out: torch.Tensor) -> torch.Tensor:
        """The denoiser's output as (B, C, h, w) (unpacked; a learned-variance half dropped)."""
        return out

    def pipeline_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Starting noise (B, C, h, w) in the layout ``pipe(latents=...)`` takes."""
        return z

    def from_pipeline_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """``pipe(output_type="latent")``'s result as (B, C, h, w) scaled latents."""
        return latents

    def pipeline_text_args(self, cond, null) -> dict:
        """``pipe(...)`` keyword arguments that generate from a condition (null as the negative)."""
        return dict(prompt_embeds=cond, negative_prompt_embeds=null)

    def pipeline_call_args(self) -> dict:
        """Extra ``pipe(...)`` arguments the family needs (e.g. no resolution binning)."""
        return {}

    def step_callback_args(self, on_step_end) -> dict:
        """``pipe(...)`` arguments that call ``on_step_end(pipe, i, t, callback_kwargs)`` after every step."""
        return dict(callback_on_step_end=on_step_end)

    def guidance_is_cfg(self) -> bool:
        """Whether the pipeline's guidance runs the denoiser twice (classifier-free guidance)."""
        return True

    # -- the VAE -------------------------------------------------------------------------------------------
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Scaled latents (posterior mean) of images in [-1, 1], (B, 3, H, W) → (B, C, h, w)."""
        vae = self.pipe.vae
        mean = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((mean - shift) * vae.config.scaling_factor).float()

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) from scaled latents."""
        vae = self.pipe.vae
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return vae.decode(z.to(vae.device, vae.dtype) / vae.config.scaling_factor + shift).sample

    # -- hook points --------------------------------------------------------------------------------------
    #: True for MMDiTs, whose text→image attention is a block of a joint attention over image and text
    #: tokens (read by :mod:`nbhelpers.joint_attention`); False for cross-attention (``attn2``) families
    joint_attention = False
    #: in a joint attention's sequence: "image_first" (SD3) or "text_first" (Flux)
    joint_layout = "image_first"

    def text_attention_layers(self) -> list[str]:
        """Processor names of the layers whose attention carries text→image attention."""
        return [n for n in self.denoiser.attn_processors if ".attn2." in n]

    def token_grid(self) -> tuple[int, int]:
        """(rows, columns) of the denoiser's image tokens (a DiT's patches; Flux's 2×2 packs)."""
        p = self.patch_multiple()
        return self.latent_shape[1] // p, self.latent_shape[2] // p

    def feature_blocks(self) -> list[str]:
        """Module names of the blocks DF-CAM can explain (UNet: down, mid and up blocks)."""
        d = self.denoiser
        return ([f"down_blocks.{i}" for i in range(len(d.down_blocks))] + ["mid_block"]
                + [f"up_blocks.{i}" for i in range(len(d.up_blocks))])

    def default_feature_block(self) -> str:
        """DF-CAM's default block (UNet: the last up block but one, as the DF-CAM paper)."""
        return self.feature_blocks()[-2]

    def block_output(self, output) -> torch.Tensor:
        """The tensor of a feature block's output that carries the image features on to the next block."""
        return output[0] if isinstance(output, tuple) else output

    def feature_map(self, features: torch.Tensor) -> torch.Tensor:
        """:meth:`block_output` as (B, C, h, w) (UNet blocks: itself)."""
        return features


class RectifiedFlow:
    """The noise of rectified-flow families (mixed in before :class:`Family`)."""

    def make_noise(self, scheduler):
        from .noise import FlowMatching

        return FlowMatching(scheduler)


class TransformerBlocks:
    """DF-CAM's feature blocks for DiTs and MMDiTs (mixed in before :class:`Family`): the transformer blocks
    of the groups ``BLOCK_GROUPS`` names, their image tokens laid out on the token grid."""

    BLOCK_GROUPS: tuple[str, ...] = ("transformer_blocks",)
    denoiser_attr = "transformer"

    def feature_blocks(self) -> list[str]:
        return [f"{group}.{i}" for group in self.BLOCK_GROUPS for i in range(len(getattr(self.denoiser, group, [])))]

    def default_feature_block(self) -> str:
        blocks = self.feature_blocks()
        return blocks[(2 * len(blocks)) // 3]  # a late block, as DF-CAM's late UNet block

    def block_output(self, output) -> torch.Tensor:
        """Blocks that also return text tokens return them first (SD3, Flux), the image tokens last."""
        return output[-1] if isinstance(output, tuple) else output

    def feature_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """The block's image tokens (B, N, D) as a grid (B, D, rows, cols)."""
        rows, cols = self.token_grid()
        tokens = tokens[:, -rows * cols:]  # (a single-stream block's output without its text tokens)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], rows, cols)
