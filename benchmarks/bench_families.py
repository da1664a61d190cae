"""Every architecture family at its real size: time and peak GPU memory of one CMI map and one traced
generation, against the pipeline's own generation, printed as a table with ratios and pass/fail.

    python benchmarks/bench_families.py                      # real sizes, needs a CUDA GPU (~60 GB for Flux)
    python benchmarks/bench_families.py --size tiny          # the tests' tiny configs, any CPU (a smoke run)
    python benchmarks/bench_families.py --families sdxl,sd3

Nothing is downloaded: each family's denoiser, VAE and text encoders are built from their published
configurations (written out below) with random weights, on the device, in the family's dtype; the
tokenizers are the toy world's, given each encoder's sequence length (what the network computes depends on
the lengths, not on the vocabulary). Random weights change no cost.

Per family, interleaved (A, B, A, B, ...) over ``--repeats`` rounds, medians and ranges:
- ``generate``: the pipeline's own 20-step generation (``pipe.__call__`` via ``model.generate``) — the reference;
- ``trace``: the same generation with the trajectory and per-step attention of every word recorded
  (``timesteps.trace``); ratio to ``generate``, pass if ≤ 1.5 (joint attention is read by a second pass over
  the image queries, so MMDiTs pay more than UNets);
- ``cmi``: one conditional-information map (``info.conditional_mutual_information``, ``n`` noise levels, two
  conditions in one batched call) — time and peak memory.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["NBHELPERS_CACHE"] = "0"  # time the computation, not the result cache

from nbhelpers import info, timesteps  # noqa: E402
from nbhelpers.model import DiffusionModel, quiet_transformers  # noqa: E402

FAMILIES = ("sdxl", "sd3", "flux-dev", "flux-schnell", "pixart")
PROMPT = "a red circle left of a blue square"


def _clip(tok, hidden, layers, heads, inter, projection=None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, projection_dim=projection or hidden,
                         hidden_act="gelu", bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5xxl(tok):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                                   feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=tok.pad_token_id,
                                   eos_token_id=tok.eos_token_id))


def _vae(latent_channels, scaling, shift=None):
    from diffusers import AutoencoderKL

    extra = dict(shift_factor=shift, use_quant_conv=False, use_post_quant_conv=False) if shift is not None else {}
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, sample_size=1024,
                         scaling_factor=scaling, **extra)


def _on_cpu(cls, **config):
    """A scheduler (its tables live on the CPU, whatever device the networks are built on)."""
    with torch.device("cpu"):
        return cls(**config)


def real_pipeline(family: str):
    """The family's pipeline at its published size (SDXL base, SD3 medium, FLUX.1, PixArt-Σ XL-2 1024), random weights."""
    with quiet_transformers():
        import diffusers as d
    from nbhelpers.toyworld.tokenizer import build_t5_tokenizer, build_tokenizer

    clip = lambda: build_tokenizer(77)  # noqa: E731
    if family == "sdxl":
        tok, tok2 = clip(), clip()
        unet = d.UNet2DConditionModel(sample_size=128, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280),
                                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                      up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                                      layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                                      attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                                      addition_embed_type="text_time", addition_time_embed_dim=256,
                                      projection_class_embeddings_input_dim=2816)
        return d.StableDiffusionXLPipeline(vae=_vae(4, 0.13025), text_encoder=_clip(tok, 768, 12, 12, 3072),
                                           text_encoder_2=_clip(tok2, 1280, 32, 20, 5120, projection=1280), tokenizer=tok,
                                           tokenizer_2=tok2, unet=unet,
                                           scheduler=_on_cpu(d.EulerDiscreteScheduler, beta_schedule="scaled_linear",
                                                              beta_start=0.00085, beta_end=0.012,
                                                              timestep_spacing="leading", steps_offset=1))
    if family == "sd3":
        tok, tok2, tok3 = clip(), clip(), build_t5_tokenizer(256)
        tr = d.SD3Transformer2DModel(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                                     num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                                     pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
        return d.StableDiffusion3Pipeline(transformer=tr, scheduler=_on_cpu(d.FlowMatchEulerDiscreteScheduler, shift=3.0),
                                          vae=_vae(16, 1.5305, 0.0609),
                                          text_encoder=_clip(tok, 768, 12, 12, 3072, projection=768), tokenizer=tok,
                                          text_encoder_2=_clip(tok2, 1280, 32, 20, 5120, projection=1280), tokenizer_2=tok2,
                                          text_encoder_3=_t5xxl(tok3), tokenizer_3=tok3)
    if family in ("flux-dev", "flux-schnell"):
        tok, tok2 = clip(), build_t5_tokenizer(512 if family == "flux-dev" else 256)
        tr = d.FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                                      attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                      pooled_projection_dim=768, guidance_embeds=family == "flux-dev",
                                      axes_dims_rope=(16, 56, 56))
        sched = _on_cpu(d.FlowMatchEulerDiscreteScheduler, shift=3.0 if family == "flux-dev" else 1.0,
                        use_dynamic_shifting=family == "flux-dev", base_shift=0.5, max_shift=1.15)
        return d.FluxPipeline(scheduler=sched, vae=_vae(16, 0.3611, 0.1159), text_encoder=_clip(tok, 768, 12, 12, 3072),
                              tokenizer=tok, text_encoder_2=_t5xxl(tok2), tokenizer_2=tok2, transformer=tr)
    if family == "pixart":
        tok = build_t5_tokenizer(300)
        tr = d.PixArtTransformer2DModel(sample_size=128, num_layers=28, patch_size=2, attention_head_dim=72,
                                        num_attention_heads=16, caption_channels=4096, in_channels=4, out_channels=8,
                                        cross_attention_dim=1152, attention_bias=True, activation_fn="gelu-approximate",
                                        num_embeds_ada_norm=1000, norm_type="ada_norm_single",
                                        norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False,
                                        interpolation_scale=2)
        return d.PixArtSigmaPipeline(tokenizer=tok, text_encoder=_t5xxl(tok), vae=_vae(4, 0.13025), transformer=tr,
                                     scheduler=_on_cpu(d.DPMSolverMultistepScheduler, beta_schedule="linear"))
    raise SystemExit(f"unknown family {family!r}; choose from {FAMILIES}")


def build(family: str, size: str, device: torch.device) -> DiffusionModel:
    dtype = torch.float32 if device.type == "cpu" else (torch.bfloat16 if family.startswith("flux") else torch.float16)
    if size == "tiny":
        from nbhelpers.toyworld.tiny import tiny_family_pipeline

        pipe = tiny_family_pipeline(family)
        pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)
        return DiffusionModel(pipe, name=family, device=device, dtype=dtype, image_size=32)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the family's dtype, on the device: no float32 copy on the host
    try:
        with torch.device(device):
            pipe = real_pipeline(family)
    finally:
        torch.set_default_dtype(old)
    return DiffusionModel(pipe.to(device, dtype), name=family, device=device, dtype=dtype, image_size=1024)


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return time.perf_counter() - t0, peak


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("real", "tiny"), default="real")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", type=int, default=32, help="noise levels of the CMI map")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if a.size == "real" and device.type != "cuda":
        raise SystemExit("--size real needs a CUDA GPU (the families are 3–17 B parameters); use --size tiny here")
    print(f"{time.strftime('%Y-%m-%d')}, {torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}, "
          f"torch {torch.__version__}, size {a.size}, {a.steps} steps, CMI n={a.n}, {a.repeats} interleaved repeats")
    print(f"| family | params (B) | generate s | trace s | trace / generate (≤ 1.5) | CMI map s | peak GB (trace / CMI) |")
    print("|---|---|---|---|---|---|---|")
    for fam in a.families.split(","):
        m = build(fam, a.size, device)
        params = sum(p.numel() for c in m.pipe.components.values() if isinstance(c, torch.nn.Module)
                     for p in c.parameters()) / 1e9
        image = m.generate(PROMPT, seed=0, steps=2).images[0]
        gen, tr, cmi, peaks = [], [], [], {}
        for r in range(a.repeats):  # interleaved
            t, _ = timed(lambda: m.generate(PROMPT, seed=r, steps=a.steps), device)
            gen.append(t)
            t, peaks["trace"] = timed(lambda: timesteps.trace(m, PROMPT, seed=r, steps=a.steps), device)
            tr.append(t)
            t, peaks["cmi"] = timed(lambda: info.conditional_mutual_information(m, image, PROMPT, "red", n=a.n, seed=r),
                                    device)
            cmi.append(t)
        ratio = statistics.median(tr) / statistics.median(gen)
        rng = lambda v: f"{statistics.median(v):.2f} ({min(v):.2f}–{max(v):.2f})"  # noqa: E731
        print(f"| {fam} | {params:.2f} | {rng(gen)} | {rng(tr)} | {ratio:.2f} {'pass' if ratio <= 1.5 else 'FAIL'} | "
              f"{rng(cmi)} | {peaks['trace']:.1f} / {peaks['cmi']:.1f} |", flush=True)
        del m
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
