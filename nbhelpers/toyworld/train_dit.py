"""Train the second toy world model: a ``StableDiffusion3Pipeline`` (MMDiT, rectified flow) on the same world.

    python -m nbhelpers.toyworld.train --arch dit --out data/models/toy-dit --minutes 75

Same world, same training split, same caption dropout (optional words dropped at random, 10 % empty
captions) and the **same VAE** as the UNet world (``data/models/toy/vae``, its weights and scaling factor,
``shift_factor`` 0): both models denoise one latent space, so the world's exact denoiser (``toy-oracle``) is
exact for both and every difference between them is the denoiser's.

What differs is the architecture and the noise: an SD3 transformer (joint attention over 8×8 image patches
and 48 text tokens; 2×2 patches of the 4×16×16 latent), three text encoders trained from scratch with it
(two CLIPs, whose penultimate hidden states sit side by side, and a T5 encoder, as in SD3), and SD3's
rectified flow: ``x_σ = (1 − σ)·x0 + σ·noise``, the network predicts the velocity ``noise − x0`` at
timestep ``1000·σ``. σ is drawn half uniformly on (0, 1) and half logit-normal around 0.62 (noisier than
SD3's 0.5: at 32 px the layout, hence the position words, is decided there); any positive density over σ
keeps the per-σ MMSE optimum the information estimators need.

The denoiser and text encoders are trained jointly with AdamW, cosine decay and an EMA of the weights
(saved). Checkpoints go to ``<out>.ckpt/`` and the run resumes from them after an interruption. The result
is saved with ``save_pretrained`` (safetensors) and loads offline with ``from_pretrained``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from . import world
from .reweighting import training_captions
from .tokenizer import build_t5_tokenizer, build_tokenizer

TEXT_LENGTH = 24  # tokens per encoder (CLIP-1, CLIP-2, T5): 48 text tokens in the joint sequence
CLIP_CONFIG = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                   max_position_embeddings=TEXT_LENGTH, projection_dim=32)
T5_CONFIG = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, dropout_rate=0.0)
TRANSFORMER_CONFIG = dict(
    sample_size=world.IMAGE_SIZE // 2, patch_size=2, in_channels=4, out_channels=4, num_layers=6,
    attention_head_dim=32, num_attention_heads=4, joint_attention_dim=64, caption_projection_dim=128,
    pooled_projection_dim=64, pos_embed_max_size=8, qk_norm="rms_norm",
)
# Sampling schedule of the saved pipeline. shift 1: 16×16 latents need none of SD3's shift 3 (1024 px).
SCHEDULER_CONFIG = dict(num_train_timesteps=1000, shift=1.0)


def build_pipeline(vae, seed: int):
    """A freshly initialised ``StableDiffusion3Pipeline`` of the toy-dit layout around ``vae``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    tok, tok2, tok3 = build_tokenizer(TEXT_LENGTH), build_tokenizer(TEXT_LENGTH), build_t5_tokenizer(TEXT_LENGTH)

    def clip(t):
        return CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(t), bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id,
            pad_token_id=t.pad_token_id, **CLIP_CONFIG))

    t5 = T5EncoderModel(T5Config(vocab_size=len(tok3), pad_token_id=tok3.pad_token_id, eos_token_id=tok3.eos_token_id,
                                 decoder_start_token_id=tok3.pad_token_id, **T5_CONFIG))
    transformer = SD3Transformer2DModel(**TRANSFORMER_CONFIG)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
                                    vae=vae, text_encoder=clip(tok), tokenizer=tok, text_encoder_2=clip(tok2),
                                    tokenizer_2=tok2, text_encoder_3=t5, tokenizer_3=tok3)


def load_world_vae(folder: Path):
    """The UNet world's VAE (weights and scaling factor) with SD3's ``shift_factor`` set to 0."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder / "vae")
    vae.register_to_config(shift_factor=0.0)
    return vae.eval().requires_grad_(False)


def draw_sigmas(b: int, gen: torch.Generator, high_noise: float = 0.0) -> torch.Tensor:
    """Noise levels σ in (0, 1), (b,): half uniform, half sigmoid(N(0.5, 1)) (median σ ≈ 0.62); then a share
    ``high_noise`` of them redrawn uniformly above the σ of ``training_loop.HIGH_NOISE_LOGSNR`` (≈ 0.852). With
    ``high_noise=0`` the generator is consumed exactly as before the option existed."""
    from ..families.noise import FlowMatching
    from .training_loop import HIGH_NOISE_LOGSNR

    uniform = torch.rand(b, generator=gen)
    logit_normal = torch.sigmoid(0.5 + torch.randn(b, generator=gen))
    sigma = torch.where(torch.rand(b, generator=gen) < 0.5, uniform, logit_normal)
    if high_noise:
        lo = float(FlowMatching.t_of(HIGH_NOISE_LOGSNR))
        high = lo + (1 - lo) * torch.rand(b, generator=gen)
        sigma = torch.where(torch.rand(b, generator=gen) < high_noise, high, sigma)
    return sigma.clamp(1e-4, 1 - 1e-4)


def band_sigmas(b: int, gen: torch.Generator, band: tuple) -> torch.Tensor:
    """(b,) noise levels drawn uniformly in σ between the log-SNRs ``band`` = (low, high): from the flow time of
    ``high`` to that of ``low`` (``families.noise.FlowMatching.t_of``)."""
    from ..families.noise import FlowMatching

    lo, hi = (float(FlowMatching.t_of(x)) for x in (band[1], band[0]))
    return (lo + (hi - lo) * torch.rand(b, generator=gen)).clamp(1e-4, 1 - 1e-4)


def flow_loss(pipe, latents, scenes, idx, rng, gen, p_empty: float = 0.1, extra=None,
              high_noise: float = 0.0, oracle=None, exact_below: float | None = None,
              open_layout: float | None = None, open_size: float | None = None,
              extra_band: tuple | None = None) -> torch.Tensor:
    """Rectified-flow loss on scenes ``idx``: captions redrawn with the word dropout (a share ``p_empty``
    empty; ``extra`` rows, the up-weighted kinds' extra draws, keep their nouns: ``reweighting``; σ from
    :func:`draw_sigmas` with its ``high_noise`` share) and encoded by
    the pipeline's own ``encode_prompt`` (so training and sampling condition alike), x_σ = (1 − σ)·x0 + σ·ε,
    target velocity ε − x0, plain mean squared error. ``exact_below`` (with ``oracle``, the training split's
    ``WorldDenoiser``): rows at log-SNR below it take the exact E[ε − x0 | x_σ, caption] as their target
    (``exact_targets``: the same optimum, without the sampled picture's noise). ``open_layout``, ``open_size``: the
    extra draws' position- and size-drop probabilities (``reweighting.training_captions``). ``extra_band``: (low, high)
    log-SNR; the extra draws' σ are redrawn uniformly between the two (:func:`band_sigmas`). None of these moves the
    per-σ optimum: they choose which captions and noise levels the steps are spent on."""
    captions = training_captions(scenes, idx, extra, rng, p_empty, p_open=open_layout, p_size=open_size)
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=captions, prompt_2=None, prompt_3=None, device="cpu",
                                              do_classifier_free_guidance=False, max_sequence_length=TEXT_LENGTH)
    x0 = latents[torch.from_numpy(np.asarray(idx))]
    noise = torch.randn(x0.shape, generator=gen)
    sigma = draw_sigmas(len(idx), gen, high_noise)
    if extra_band is not None and extra is not None and np.any(extra):
        sigma = torch.where(torch.from_numpy(np.asarray(extra, bool)), band_sigmas(len(idx), gen, extra_band), sigma)
    s = sigma.view(-1, 1, 1, 1)
    x_sigma = (1 - s) * x0 + s * noise
    pred = pipe.transformer(hidden_states=x_sigma, timestep=sigma * 1000,
                            encoder_hidden_states=embeds, pooled_projections=pooled).sample
    target = noise - x0
    if exact_below is not None:
        from ..families.noise import FlowMatching
        from .exact_targets import flow_velocity_targets

        rows = torch.nonzero(FlowMatching.logsnr_of_t(sigma) < exact_below).squeeze(1)
        if len(rows):
            target = target.clone()
            target[rows] = flow_velocity_targets(oracle, x_sigma[rows], sigma[rows], [captions[i] for i in rows])
    return (pred - target).pow(2).mean()


def _trainable(pipe) -> dict:
    return {"transformer": pipe.transformer, "clip": pipe.text_encoder, "clip2": pipe.text_encoder_2,
            "t5": pipe.text_encoder_3}


def load_trained_weights(pipe, folder: Path) -> None:
    """Copy a saved toy-dit pipeline's transformer and text-encoder weights (``folder``) into ``pipe``."""
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    saved = {"transformer": SD3Transformer2DModel.from_pretrained(folder / "transformer"),
             "clip": CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder"),
             "clip2": CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2"),
             "t5": T5EncoderModel.from_pretrained(folder / "text_encoder_3")}
    for key, net in _trainable(pipe).items():
        net.load_state_dict(saved[key].state_dict())


def train(scenes, latents, vae, ckpt, plan, batch: int, seed: int, log: dict, from_pipeline: Path | None = None,
          vae_from: Path = Path("data/models/toy")):
    """Train the toy-dit pipeline's denoiser and text encoders under ``plan`` (a ``training_loop.Cycles``);
    returns the pipeline with EMA weights. ``vae_from``: the UNet world whose VAE is shared (and on which the
    exact-target cycles build the world's exact denoiser). ``from_pipeline``: a saved toy-dit whose run this continues when
    ``ckpt`` holds no checkpoint (``training_loop.seed_checkpoint``; ``log`` is then that run's log)."""
    from .training_loop import seed_checkpoint, train_cycles

    pipe = build_pipeline(vae, seed)
    oracle = None
    if any(plan.settings_of(k).exact_below is not None for k in range(len(plan.extend_steps))):
        from ..model import load_model
        from .oracle import WorldDenoiser

        # the training distribution's exact denoiser, in the shared VAE's latent space (exact_targets)
        oracle = WorldDenoiser(load_model(str(vae_from), device="cpu", dtype=torch.float32), split="train",
                               progress=False)
    if from_pipeline is not None and not (ckpt.folder / "dit.json").exists():
        load_trained_weights(pipe, from_pipeline)
        step = seed_checkpoint("dit", _trainable(pipe), ckpt, plan, log)
        # the record of where the optimizer started afresh from saved weights
        log.setdefault("continued_from_pipeline", []).append({"step": step, "folder": str(from_pipeline)})

    def loss_fn(idx, extra, rng, gen, settings):
        return flow_loss(pipe, latents, scenes, idx, rng, gen, extra=extra, high_noise=settings.high_noise,
                         oracle=oracle, exact_below=settings.exact_below, open_layout=settings.open_layout,
                         open_size=settings.open_size, extra_band=settings.extra_band)

    train_cycles("dit", _trainable(pipe), loss_fn, scenes, ckpt, plan, batch, seed, log, desc="DiT+text")
    return pipe


def main(a) -> None:
    """``python -m nbhelpers.toyworld.train --arch dit`` (arguments parsed there)."""
    from safetensors.torch import load_file, save_file

    from .train import Checkpointer, cycles_from_args, encode_all, make_dataset

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    ckpt = Checkpointer(Path(str(out) + ".ckpt"))
    log_path = ckpt.folder / "log.json"
    from_pipeline = Path(a.from_pipeline) if a.from_pipeline else None
    if log_path.exists():
        log = json.loads(log_path.read_text())
    elif from_pipeline is not None:  # continuing a finished run from its saved pipeline: its log continues
        log = json.loads((from_pipeline / "training_log.json").read_text())
    else:
        log = {}
    t0 = time.time()
    vae = load_world_vae(Path(a.vae_from))
    cache = ckpt.folder / "latents.safetensors"  # encoded once, reused when resuming
    if cache.exists():
        scenes = world.sample_scenes(a.n_images, seed=a.seed, split="train")
        latents = load_file(cache)["latents"]
    else:
        scenes, images = make_dataset(a.n_images, a.seed)
        latents = encode_all(vae, images)
        save_file({"latents": latents.contiguous()}, cache)
    scaled = latents * vae.config.scaling_factor
    log.update(scaling_factor=vae.config.scaling_factor, vae_from=str(a.vae_from),
               latent_std=float(scaled.std()), latent_mean=float(scaled.mean()))
    log_path.write_text(json.dumps(log, indent=1))
    pipe = train(scenes, scaled, vae, ckpt, cycles_from_args(a), a.batch, a.seed + 1, log, from_pipeline,
                 Path(a.vae_from))
    pipe.save_pretrained(out, safe_serialization=True)
    log.update(arch="dit", n_images=a.n_images, batch=a.batch, threads=a.threads, lr=a.lr,
               wall_seconds_this_run=time.time() - t0,
               parameters={k: sum(p.numel() for p in m.parameters()) for k, m in
                           {"vae": pipe.vae, **_trainable(pipe)}.items()})
    log_path.write_text(json.dumps(log, indent=1))
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps({k: v for k, v in log.items() if k != "loss_curve"}, indent=1))
