"""Flux.1 (dev and schnell): an MMDiT with double-stream (joint) and single-stream blocks, rectified
flow (:class:`~nbhelpers.families.noise.FlowMatching`), latents packed into 2×2 patches
(``(B, C, h, w)`` ↔ ``(B, h/2·w/2, 4C)``, the pipeline's own ``_pack_latents``/``_unpack_latents``)
with position ids. The denoiser attends to T5 tokens only; CLIP-L contributes its pooled embedding
(``pooled_projections``). Its timestep input is ``t`` in (0, 1) (the pipeline passes ``timestep/1000``).

Null condition: the empty prompt through T5 and CLIP (the pipeline's negative prompt for true CFG).

Distilled denoisers and I-MMSE. *dev* is guidance-distilled: the network takes a guidance value and
imitates classifier-free guidance at that scale in one call; it is not trained as the conditional
MMSE denoiser E[ε | z, c]. We query it at guidance 1 (``family.guidance``; no extrapolation, the
closest thing it has to the conditional denoiser) for every estimate; ``generate`` passes the
requested guidance as the embedding, as the pipeline does. *schnell* is timestep-distilled
(adversarially, for 1–4 steps): its output at a given t is not an MMSE estimate either. On both, the
I-MMSE integrals are *denoising-gain scores* that rank words and pixels; they are not mutual
information in nats with the guarantees the estimator has on an MMSE-trained model, and the suite
says so in their params (``family.distilled``).

Text→image attention: the image-query × text-key block of every double-stream block
(``transformer_blocks.N.attn``) and single-stream block (``single_transformer_blocks.N.attn``)."""
from __future__ import annotations

import torch

from .base import Family, RectifiedFlow, TextEncoderSlot, TransformerBlocks
from .condition import Condition


class FluxFamily(RectifiedFlow, TransformerBlocks, Family):
    name = "flux"
    title = "Flux.1 (MMDiT with double/single-stream blocks, rectified flow)"
    pipeline_classes = ("FluxPipeline",)
    null_condition_doc = "the empty prompt through T5 and CLIP (the pipeline's negative prompt for true CFG)"
    guidance = 1.0

    @property
    def distilled(self) -> str | None:
        """"guidance" (dev), "timestep" (schnell: no guidance embedding) — Flux's public models are both distilled."""
        return "guidance" if self.denoiser.config.guidance_embeds else "timestep"

    def latent_channels(self) -> int:
        return int(self.denoiser.config.in_channels) // 4

    def default_image_size(self) -> int:
        return int(getattr(self.pipe, "default_sample_size", 128)) * self.vae_scale

    def patch_multiple(self) -> int:
        return 2

    @property
    def max_sequence_length(self) -> int:
        return min(512, int(self.pipe.tokenizer_2.model_max_length))

    def encoders(self):
        return [TextEncoderSlot("T5", self.pipe.tokenizer_2, self.max_sequence_length, 0),
                TextEncoderSlot("CLIP-L (pooled)", self.pipe.tokenizer, int(self.pipe.tokenizer.model_max_length), None)]

    def encode(self, prompts, device, dtype):
        embeds, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, device=device,
                                                    max_sequence_length=self.max_sequence_length)
        return Condition("prompt_embeds", prompt_embeds=embeds.to(dtype), pooled_projections=pooled.to(dtype))

    # -- packing ---------------------------------------------------------------------------------------
    def pack(self, z: torch.Tensor) -> torch.Tensor:
        b, c, h, w = z.shape
        return self.pipe._pack_latents(z, b, c, h, w)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        return self.pipe._unpack_latents(packed, self.image_size, self.image_size, self.vae_scale)

    def net_call(self, z_net, t_net, cond):
        b, _, h, w = z_net.shape
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, z_net.device, z_net.dtype)
        txt_ids = torch.zeros(cond.prompt_embeds.shape[1], 3, device=z_net.device, dtype=z_net.dtype)
        guidance = (torch.full((b,), float(self.guidance), device=z_net.device, dtype=torch.float32)
                    if self.denoiser.config.guidance_embeds else None)
        out = self.denoiser(hidden_states=self.pack(z_net), timestep=t_net / self.noise.num_train_timesteps,
                            guidance=guidance, pooled_projections=cond.pooled_projections,
                            encoder_hidden_states=cond.prompt_embeds, txt_ids=txt_ids, img_ids=img_ids).sample
        return self.unpack(out)

    def logsnr_of_net_timestep(self, t_net) -> float:
        return float(self.noise.logsnr_of(float(torch.as_tensor(t_net).reshape(-1)[0]) * self.noise.num_train_timesteps))

    def net_input_latents(self, hidden):
        return self.unpack(hidden)

    def net_output_latents(self, out):
        return self.unpack(out)

    def pipeline_latents(self, z):
        return self.pack(z)

    def from_pipeline_latents(self, latents):
        return self.unpack(latents)

    def pipeline_text_args(self, cond, null):
        return dict(prompt_embeds=cond.prompt_embeds, pooled_prompt_embeds=cond.pooled_projections)

    def pipeline_call_args(self):
        return dict(max_sequence_length=self.max_sequence_length)

    def guidance_is_cfg(self) -> bool:
        return False

    joint_attention = True
    joint_layout = "text_first"
    BLOCK_GROUPS = ("transformer_blocks", "single_transformer_blocks")

    def text_attention_layers(self):
        return [n for n in self.denoiser.attn_processors
                if n.startswith(("transformer_blocks.", "single_transformer_blocks."))]
