"""SDXL: two CLIP encoders (CLIP-L and OpenCLIP-G, hidden states concatenated along features,
(B, 77, 768 + 1280)), the second one's pooled, projected embedding and the "time ids" (original
size, crop corner, target size) through the UNet's ``added_cond_kwargs``; DDPM noise.

Null condition: with ``force_zeros_for_empty_prompt`` (SDXL base's setting) the pipeline's
unconditional branch is *zeros* for both the hidden states and the pooled embedding, not the encoded
empty prompt; we use exactly what the pipeline uses (zeros, or the empty prompt's encoding when the
flag is off), with the same time ids."""
from __future__ import annotations

import torch

from .base import Family, TextEncoderSlot
from .condition import Condition


class StableDiffusionXLFamily(Family):
    name = "sdxl"
    title = "SDXL (UNet, two CLIP encoders, DDPM)"
    pipeline_classes = ("StableDiffusionXLPipeline",)

    @property
    def null_condition_doc(self) -> str:
        if self.pipe.config.get("force_zeros_for_empty_prompt", True):
            return "zeros for hidden states and pooled embedding (force_zeros_for_empty_prompt), same time ids"
        return "the empty prompt through both encoders, same time ids"

    def encoders(self):
        slots = [TextEncoderSlot("CLIP-L", self.pipe.tokenizer, int(self.pipe.tokenizer.model_max_length), 0)]
        if self.pipe.tokenizer_2 is not None:  # same positions: the two encoders' states sit side by side
            slots.append(TextEncoderSlot("OpenCLIP-G", self.pipe.tokenizer_2, int(self.pipe.tokenizer_2.model_max_length), 0))
        return slots

    def _time_ids(self, batch: int, device, dtype) -> torch.Tensor:
        size = (self.image_size, self.image_size)
        proj = self.pipe.text_encoder_2.config.projection_dim if self.pipe.text_encoder_2 is not None \
            else int(self.pipe.text_encoder.config.projection_dim)
        ids = self.pipe._get_add_time_ids(size, (0, 0), size, dtype=dtype, text_encoder_projection_dim=proj)
        return ids.to(device).expand(batch, -1)

    def encode(self, prompts, device, dtype):
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), device=device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        return Condition("prompt_embeds", prompt_embeds=embeds.to(dtype), text_embeds=pooled.to(dtype),
                         time_ids=self._time_ids(len(prompts), device, dtype))

    def null(self, device, dtype):
        c = self.encode([""], device, dtype)
        if self.pipe.config.get("force_zeros_for_empty_prompt", True):
            c = Condition("prompt_embeds", prompt_embeds=torch.zeros_like(c.prompt_embeds),
                          text_embeds=torch.zeros_like(c.text_embeds), time_ids=c.time_ids)
        return c

    def net_call(self, z_net, t_net, cond):
        return self.denoiser(z_net, t_net, encoder_hidden_states=cond.prompt_embeds,
                             added_cond_kwargs={"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}).sample

    def pipeline_text_args(self, cond, null):
        return dict(prompt_embeds=cond.prompt_embeds, pooled_prompt_embeds=cond.text_embeds,
                    negative_prompt_embeds=null.prompt_embeds, negative_pooled_prompt_embeds=null.text_embeds)
