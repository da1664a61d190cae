"""PixArt-Σ (and -α): a DiT with cross-attention to T5 hidden states (with their attention mask),
DDPM noise, ε prediction with a learned-variance half in the output (dropped: the first
``in_channels`` channels are ε).

Null condition: the empty prompt through T5 with its mask (the pipeline's negative prompt).
Text→image attention: each block's cross-attention (``transformer_blocks.N.attn2``)."""
from __future__ import annotations

from .base import Family, TextEncoderSlot, TransformerBlocks
from .condition import Condition


class PixArtFamily(TransformerBlocks, Family):
    name = "pixart"
    title = "PixArt-Σ/α (DiT with cross-attention, T5, DDPM)"
    pipeline_classes = ("PixArtSigmaPipeline", "PixArtAlphaPipeline")
    null_condition_doc = "the empty prompt through T5, with its attention mask (the pipeline's negative prompt)"

    def patch_multiple(self) -> int:
        return int(self.denoiser.config.patch_size)

    @property
    def max_sequence_length(self) -> int:
        return min(300, int(self.pipe.tokenizer.model_max_length))

    def encoders(self):
        return [TextEncoderSlot("T5", self.pipe.tokenizer, self.max_sequence_length, 0)]

    def encode(self, prompts, device, dtype):
        embeds, mask, _, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False, device=device,
                                                     clean_caption=False, max_sequence_length=self.max_sequence_length)
        return Condition("prompt_embeds", prompt_embeds=embeds.to(dtype), prompt_attention_mask=mask)

    def net_call(self, z_net, t_net, cond):
        out = self.denoiser(z_net, encoder_hidden_states=cond.prompt_embeds,
                            encoder_attention_mask=cond.prompt_attention_mask, timestep=t_net,
                            added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        return self.net_output_latents(out)

    def net_output_latents(self, out):
        c = self.latent_channels()
        return out[:, :c] if out.shape[1] == 2 * c else out

    BLOCK_GROUPS = ("transformer_blocks",)
    def pipeline_text_args(self, cond, null):
        return dict(prompt_embeds=cond.prompt_embeds, prompt_attention_mask=cond.prompt_attention_mask,
                    negative_prompt_embeds=null.prompt_embeds, negative_prompt_attention_mask=null.prompt_attention_mask,
                    negative_prompt=None)  # (PixArt's pipeline defaults the negative prompt to "", which clashes)

    def step_callback_args(self, on_step_end):
        """PixArt's pipelines have only the older ``callback(step, t, latents)`` (every ``callback_steps``)."""
        return dict(callback=lambda i, t, latents: on_step_end(self.pipe, i, t, {}), callback_steps=1)

    def pipeline_call_args(self):
        return dict(use_resolution_binning=False, max_sequence_length=self.max_sequence_length, clean_caption=False)
