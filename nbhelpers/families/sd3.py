"""Stable Diffusion 3 / 3.5: an MMDiT (joint attention over image and text tokens) with rectified-flow
noise (:class:`~nbhelpers.families.noise.FlowMatching`). Three encoders: CLIP-L and OpenCLIP-G (hidden
states side by side, zero-padded to T5's width: the first 77 text tokens) and T5-XXL (the next
``max_sequence_length`` tokens); the pooled embeddings of both CLIPs go in through
``pooled_projections``. A word's text columns are its CLIP tokens *and* its T5 tokens.

Null condition: the empty prompt through all three encoders (SD3's negative prompt default).
Text→image attention: the image-query × text-key block of each joint-attention layer
(``transformer_blocks.N.attn``)."""
from __future__ import annotations

import re

from .base import Family, RectifiedFlow, TextEncoderSlot, TransformerBlocks
from .condition import Condition


class StableDiffusion3Family(RectifiedFlow, TransformerBlocks, Family):
    name = "sd3"
    title = "Stable Diffusion 3/3.5 (MMDiT, rectified flow)"
    pipeline_classes = ("StableDiffusion3Pipeline",)
    null_condition_doc = "the empty prompt through CLIP-L, OpenCLIP-G and T5 (the pipeline's negative prompt)"

    def patch_multiple(self) -> int:
        return int(self.denoiser.config.patch_size)

    @property
    def max_sequence_length(self) -> int:
        tok3 = self.pipe.tokenizer_3
        return min(256, int(tok3.model_max_length)) if tok3 is not None else 256

    def encoders(self):
        clip_len = int(self.pipe.tokenizer.model_max_length)
        slots = [TextEncoderSlot("CLIP-L", self.pipe.tokenizer, clip_len, 0),
                 TextEncoderSlot("OpenCLIP-G", self.pipe.tokenizer_2, int(self.pipe.tokenizer_2.model_max_length), 0)]
        if self.pipe.tokenizer_3 is not None and self.pipe.text_encoder_3 is not None:
            slots.append(TextEncoderSlot("T5", self.pipe.tokenizer_3, self.max_sequence_length, clip_len))
        return slots

    def encode(self, prompts, device, dtype):
        embeds, _, pooled, _ = self.pipe.encode_prompt(prompt=list(prompts), prompt_2=None, prompt_3=None, device=device,
                                                       do_classifier_free_guidance=False,
                                                       max_sequence_length=self.max_sequence_length)
        return Condition("prompt_embeds", prompt_embeds=embeds.to(dtype), pooled_projections=pooled.to(dtype))

    def net_call(self, z_net, t_net, cond):
        return self.denoiser(hidden_states=z_net, timestep=t_net, encoder_hidden_states=cond.prompt_embeds,
                             pooled_projections=cond.pooled_projections).sample

    def pipeline_text_args(self, cond, null):
        return dict(prompt_embeds=cond.prompt_embeds, pooled_prompt_embeds=cond.pooled_projections,
                    negative_prompt_embeds=null.prompt_embeds, negative_pooled_prompt_embeds=null.pooled_projections)

    def pipeline_call_args(self):
        return dict(max_sequence_length=self.max_sequence_length)

    joint_attention = True
    joint_layout = "image_first"
    BLOCK_GROUPS = ("transformer_blocks",)

    def text_attention_layers(self):
        # the joint attention of each block (SD3.5's extra image-only self-attention "attn2" is not text→image)
        return [n for n in self.denoiser.attn_processors if re.fullmatch(r"transformer_blocks\.\d+\.attn\.processor", n)]
