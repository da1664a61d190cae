"""Train the bundled toy text-to-image pipeline (Stable Diffusion's layout) on the toy world.

    python -m nbhelpers.toyworld.train --out data/models/toy --minutes 60

Stage 1 trains the VAE (reconstruction + a small KL term) and fixes its ``scaling_factor`` so that
latents have unit variance. Stage 2 trains the UNet and the CLIP text encoder jointly with the
v-prediction loss on precomputed latents, with captions redrawn every
step: optional words are dropped at random (so prompts with a word deleted are in distribution) and
10 % of captions are empty (classifier-free guidance and the unconditional denoiser). The UNet predicts
v (as SD 2.x does) and noisy timesteps are oversampled, so that position words are learned. Both stages
checkpoint to ``<out>.ckpt/`` and resume after an interruption. The result is saved with
``StableDiffusionPipeline.save_pretrained`` (safetensors) and loads offline with ``from_pretrained``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import world
from .reweighting import training_captions
from .tokenizer import build_tokenizer

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16, sample_size=world.IMAGE_SIZE,
)
# Three levels (16x16, 8x8, 4x4): the 4x4 bottleneck gives every position a sense of where it is
# (a two-level UNet learned colours but placed objects at random: position words need it).
UNET_CONFIG = dict(
    sample_size=world.IMAGE_SIZE // 2, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3,
    up_block_types=("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(48, 96, 96), layers_per_block=1, cross_attention_dim=64,
    attention_head_dim=4, norm_num_groups=16,
)
TEXT_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                   max_position_embeddings=24, projection_dim=64)
# Stable Diffusion's noise schedule, with SD 2.x's v-prediction: at high noise v ≈ -x0, so the network
# predicts the layout directly (an epsilon model sees layout errors scaled down by the SNR, ~0.005 at
# t = 999, and never learned where position words put objects).
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="v_prediction")


def make_dataset(n: int, seed: int) -> tuple[list[world.Scene], torch.Tensor]:
    """``n`` training scenes and their images as uint8 (n, 3, 32, 32)."""
    scenes = world.sample_scenes(n, seed=seed, split="train")
    return scenes, render_all(scenes)


def render_all(scenes) -> torch.Tensor:
    """The scenes' images as uint8 (n, 3, 32, 32)."""
    images = np.stack([s.render() for s in tqdm(scenes, desc="render", mininterval=5)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.float() / 127.5 - 1.0


class Checkpointer:
    """Saves and restores training state under one folder (weights as safetensors)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, name: str, modules: dict, step: int, extra: dict | None = None):
        from safetensors.torch import save_model

        for key, mod in modules.items():
            if isinstance(mod, torch.optim.Optimizer):
                torch.save(mod.state_dict(), self.folder / f"{name}.{key}.pt")
            else:  # save_model stores tied weights (T5's shared embedding) once
                save_model(mod, str(self.folder / f"{name}.{key}.safetensors"))
        (self.folder / f"{name}.json").write_text(json.dumps({"step": step, **(extra or {})}))

    def load(self, name: str, modules: dict) -> dict | None:
        from safetensors.torch import load_model

        meta = self.folder / f"{name}.json"
        if not meta.exists():
            return None
        for key, mod in modules.items():
            if isinstance(mod, torch.optim.Optimizer):
                mod.load_state_dict(torch.load(self.folder / f"{name}.{key}.pt", weights_only=True))
            else:
                load_model(mod, str(self.folder / f"{name}.{key}.safetensors"))
        return json.loads(meta.read_text())


def cosine_lr(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))


def train_vae(images: torch.Tensor, ckpt: Checkpointer, steps: int, batch: int, seed: int, log: dict):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    state = ckpt.load("vae", {"model": vae, "opt": opt}) or {"step": 0}
    if state.get("done"):
        return vae
    gen = torch.Generator().manual_seed(seed)
    t0 = time.time()
    bar = tqdm(range(state["step"], steps), desc="VAE", initial=state["step"], total=steps, mininterval=10)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cosine_lr(step, steps, 1e-3, warmup=50)
        idx = torch.randint(0, len(images), (batch,), generator=gen)
        x = to_unit(images[idx])
        post = vae.encode(x).latent_dist
        z = post.sample(generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / x[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % 200 == 0:
            ckpt.save("vae", {"model": vae, "opt": opt}, step + 1)
    log["vae_seconds"] = log.get("vae_seconds", 0) + time.time() - t0
    ckpt.save("vae", {"model": vae, "opt": opt}, steps, {"done": True})
    return vae


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Posterior means (unscaled) of all images, (n, 4, 16, 16)."""
    out = []
    for i in tqdm(range(0, len(images), batch), desc="encode", mininterval=10):
        out.append(vae.encode(to_unit(images[i : i + batch])).latent_dist.mean)
    return torch.cat(out)


def loss_weights(sched) -> torch.Tensor:
    """Per-timestep weights of the loss on v, (1000,): the implied clean-image weight is min(1 + SNR, 6),
    capped at low noise (min-SNR-5 in v form) and never below 1 at high noise, where the layout is
    decided. Any positive per-timestep weight keeps the per-timestep MMSE optimum the information
    estimators need."""
    snr = sched.alphas_cumprod / (1 - sched.alphas_cumprod)
    return torch.clamp(snr + 1, max=6.0) / (snr + 1)


def draw_timesteps(b: int, gen: torch.Generator, sched, high_noise: float = 0.0) -> torch.Tensor:
    """Training timesteps (b,): half uniform on 0..999, half from the noisier 60 % (t ≥ 400: layout and position);
    then a share ``high_noise`` redrawn uniformly among the timesteps of ``sched`` whose log-SNR is below
    ``training_loop.HIGH_NOISE_LOGSNR`` (t ≥ 826 for the world's schedule). With ``high_noise=0`` the generator is
    consumed exactly as before the option existed."""
    t = torch.where(torch.rand(b, generator=gen) < 0.5, torch.randint(0, 1000, (b,), generator=gen),
                    torch.randint(400, 1000, (b,), generator=gen))
    if high_noise:
        from .training_loop import HIGH_NOISE_LOGSNR

        logsnr = torch.log(sched.alphas_cumprod / (1 - sched.alphas_cumprod))
        first = int((logsnr >= HIGH_NOISE_LOGSNR).sum())  # log-SNR falls with t
        high = torch.randint(first, len(logsnr), (b,), generator=gen)
        t = torch.where(torch.rand(b, generator=gen) < high_noise, high, t)
    return t


def denoising_loss(unet, text, tokenizer, sched, weight, latents, scenes, idx, rng, gen, p_empty: float = 0.1,
                   extra=None, high_noise: float = 0.0):
    """The training loss on scenes ``idx``: captions redrawn with the word dropout (a share ``p_empty``
    empty; ``extra`` rows, the up-weighted kinds' extra draws, keep their nouns: ``reweighting``), timesteps from
    :func:`draw_timesteps` (with its ``high_noise`` share), v-prediction weighted by ``weight[t]``. ``rng`` (numpy) draws
    captions, ``gen`` (torch) noise and timesteps."""
    captions = training_captions(scenes, idx, extra, rng, p_empty)
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    x0 = latents[torch.from_numpy(np.asarray(idx))]
    noise = torch.randn(x0.shape, generator=gen)
    t = draw_timesteps(len(idx), gen, sched, high_noise)
    pred = unet(sched.add_noise(x0, noise, t), t, text(ids).last_hidden_state).sample
    target = sched.get_velocity(x0, noise, t)
    return (weight[t] * (pred - target).pow(2).mean(dim=(1, 2, 3))).mean()


class EMAState(torch.nn.Module):
    """An ``EMAModel``'s shadow weights as a module's state dict, so that the checkpointer saves them."""

    def __init__(self, ema):
        super().__init__()
        self.ema = ema

    def state_dict(self, *a, **k):
        return {f"p{i}": p for i, p in enumerate(self.ema.shadow_params)}

    def load_state_dict(self, sd, *a, **k):
        for i, p in enumerate(self.ema.shadow_params):
            p.data.copy_(sd[f"p{i}"])
        return [], []  # (missing, unexpected), as Module.load_state_dict reports them


def train_denoiser(scenes, latents, tokenizer, ckpt: Checkpointer, plan, batch: int, seed: int, log: dict):
    """Train the UNet and its CLIP text encoder under ``plan`` (a ``training_loop.Cycles``); returns them
    with their EMA weights and the training scheduler."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .training_loop import CycleSettings, train_cycles

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                        **TEXT_CONFIG))
    sched = DDPMScheduler(**SCHEDULE)
    weight = loss_weights(sched)

    def loss_fn(idx, extra, rng, gen, settings):
        if replace(settings, high_noise=0.0) != CycleSettings():  # any setting but the high-noise share (the
            # command line refuses them too)
            raise ValueError("exact targets, open layouts and extra-draw noise bands (--extend-exact-targets, "
                             "--extend-open-layout, --extend-open-size, --extend-extra-logsnr) are implemented for "
                             "--arch dit only")
        return denoising_loss(unet, text, tokenizer, sched, weight, latents, scenes, idx, rng, gen, p_empty=0.1,
                              extra=extra, high_noise=settings.high_noise)

    train_cycles("denoiser", {"unet": unet, "text": text}, loss_fn, scenes, ckpt, plan, batch, seed, log,
                 desc="UNet+text")
    return unet, text, sched


def save_pipeline(out: Path, vae, unet, text, tokenizer):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**SCHEDULE, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def _parse_weights(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        kind, _, value = part.partition("=")
        if kind not in world.KIND_RATES or not value:
            raise SystemExit(f"--extend-kind-weights: expected kind=weight with kind in {tuple(world.KIND_RATES)}, "
                             f"got {part!r}")
        try:
            out[kind] = float(value)
        except ValueError:
            raise SystemExit(f"--extend-kind-weights: {part!r} is not kind=number") from None
        if not out[kind] >= 1:
            raise SystemExit(f"--extend-kind-weights: {part!r} is below 1; a later cycle can only draw a kind more "
                             "often (give weights ≥ 1, e.g. 'subject=3')")
    return out


def cycles_from_args(a):
    """The ``training_loop.Cycles`` the command line asks for."""
    from .training_loop import Cycles

    bad = [h for h in (a.extend_high_noise or ()) if not 0.0 <= h <= 1.0]
    if bad:
        raise SystemExit(f"--extend-high-noise: {bad[0]} is not a share of a batch; give a number in [0, 1], e.g. 0.3")
    exact = tuple(_parse_exact(x) for x in (a.extend_exact_targets or ()))
    open_layout = tuple(_parse_open(x) for x in (a.extend_open_layout or ()))
    open_size = tuple(_parse_open(x, "--extend-open-size", "size word") for x in (a.extend_open_size or ()))
    band = tuple(_parse_band(x) for x in (a.extend_extra_logsnr or ()))
    for flag, values in (("--extend-exact-targets", exact), ("--extend-open-layout", open_layout),
                         ("--extend-open-size", open_size), ("--extend-extra-logsnr", band)):
        if any(x is not None for x in values) and a.arch != "dit":
            raise SystemExit(f"{flag} is implemented for --arch dit only (the UNet world is fine-tuned by "
                             "python -m nbhelpers.toyworld.calibrate)")
    return Cycles(minutes=a.minutes, max_steps=a.max_steps, peak_lr=a.lr, extend_steps=tuple(a.extend_steps or ()),
                  extend_lr=a.extend_lr,
                  extend_kind_weights=tuple(_parse_weights(w) for w in (a.extend_kind_weights or ["pair=2,subject=2"])),
                  extend_high_noise=tuple(a.extend_high_noise or ()), extend_exact_targets=exact, extend_open_layout=open_layout,
                  extend_open_size=open_size, extend_extra_band=band)


def _parse_optional(flag: str, text: str, valid, hint: str) -> float | None:
    """A per-cycle number from the command line: 'none' (None) or a float that ``valid`` accepts."""
    if text.strip().lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not valid(value):
        raise SystemExit(f"{flag}: {text!r} is not {hint} or 'none' for a cycle without")
    return value


def _parse_open(text: str, flag: str = "--extend-open-layout", words: str = "position phrase") -> float | None:
    return _parse_optional(flag, text, lambda v: 0.0 <= v <= 1.0,
                           f"a probability; give a number in [0, 1] such as 0.75 (extra draws' captions drop their "
                           f"{words} that often; the world's rate is 0.25)")


def _parse_band(text: str) -> tuple | None:
    """'LOW,HIGH' (two log-SNRs, LOW < HIGH) or 'none'."""
    if text.strip().lower() == "none":
        return None
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        lo = hi = float("nan")
    if not (np.isfinite([lo, hi]).all() and lo < hi):
        raise SystemExit(f"--extend-extra-logsnr: {text!r} is not a log-SNR band; give LOW,HIGH with LOW < HIGH, "
                         "such as -6,-2, or 'none' for a cycle without")
    return (lo, hi)


def _parse_exact(text: str) -> float | None:
    return _parse_optional("--extend-exact-targets", text, np.isfinite,
                           "a log-SNR; give a number such as -4 (exact targets below log-SNR -4)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("unet", "dit"), default="unet",
                    help="unet: the SD-layout world model (data/models/toy); dit: the SD3-layout one "
                         "(data/models/toy-dit, nbhelpers.toyworld.train_dit)")
    ap.add_argument("--out", default=None, help="output folder (default data/models/toy or data/models/toy-dit)")
    ap.add_argument("--vae-from", default="data/models/toy", help="dit: the pipeline whose VAE is reused")
    ap.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the first cycle")
    ap.add_argument("--n-images", type=int, default=60000)
    ap.add_argument("--vae-steps", type=int, default=600)
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-time budget of the first cycle of the denoiser")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--extend-steps", type=int, action="append",
                    help="after the first cycle, one more cosine cycle of this many steps (repeat for several; "
                         "resumes a finished run)")
    ap.add_argument("--extend-lr", type=float, default=3e-4, help="peak learning rate of the later cycles")
    ap.add_argument("--extend-kind-weights", action="append",
                    help="scene-kind sampling weights of a later cycle, e.g. 'pair=2,subject=2' (the default; repeat "
                         "once per --extend-steps, the last one serves the cycles after it)")
    ap.add_argument("--extend-high-noise", type=float, action="append",
                    help="share of each batch of a later cycle drawn at log-SNR below training_loop.HIGH_NOISE_LOGSNR "
                         "(-3.5), where an open layout is decided (repeat once per --extend-steps, the last serves "
                         "the cycles after it; default 0)")
    ap.add_argument("--extend-exact-targets", action="append", metavar="LOGSNR",
                    help="dit: a later cycle trains on the world's exact posterior mean (toy-oracle, training split) in "
                         "place of the sampled picture at log-SNR below this (e.g. -4; 'none': off; repeat once per "
                         "--extend-steps, the last serves the cycles after it): the same optimum, far less gradient "
                         "noise where the picture is still undecided (nbhelpers.toyworld.exact_targets)")
    ap.add_argument("--extend-open-layout", action="append", metavar="P",
                    help="dit: in a later cycle the extra draws' captions drop their position phrase with probability P "
                         "(the world drops it with 0.25; 'none': that; repeat once per --extend-steps, the last serves the "
                         "cycles after it): more captions that leave the layout open, whose pictures stay the world's "
                         "(nbhelpers.toyworld.reweighting)")
    ap.add_argument("--extend-open-size", action="append", metavar="P",
                    help="dit: in a later cycle a lone extra draw's caption drops its size word with probability P "
                         "(with --extend-open-layout 1 and this at 1 the extra captions leave the layout open: 'a chef'; "
                         "'none': the world's 0.25; repeat once per --extend-steps, the last serves the cycles after it)")
    ap.add_argument("--extend-extra-logsnr", action="append", metavar="LOW,HIGH",
                    help="dit: in a later cycle the extra draws' noise levels are drawn uniformly in σ between these "
                         "log-SNRs (e.g. -6,-2, where an open layout's size and position are decided; 'none': as every "
                         "other row; repeat once per --extend-steps, the last serves the cycles after it; write it with '=', "
                         "--extend-extra-logsnr=-6,-2, as the value starts with a minus)")
    ap.add_argument("--from-pipeline", default=None,
                    help="dit: continue the finished run saved in this folder (its weights and training_log.json) when "
                         "no checkpoint is left in <out>.ckpt (checkpoints are not kept in the repository); give the "
                         "run's --extend-steps and new ones")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    a = ap.parse_args(argv)
    a.out = a.out or ("data/models/toy-dit" if a.arch == "dit" else "data/models/toy")
    plan = cycles_from_args(a)  # a typo in the kind weights fails here, not after the data are made
    if a.from_pipeline:
        if a.arch != "dit":
            raise SystemExit("--from-pipeline continues a toy-dit run (--arch dit); the UNet world is fine-tuned from its "
                             "saved pipeline by python -m nbhelpers.toyworld.calibrate")
        if not (Path(a.from_pipeline) / "training_log.json").exists():
            raise SystemExit(f"--from-pipeline {a.from_pipeline}: no training_log.json there; give a folder that "
                             "python -m nbhelpers.toyworld.train --arch dit saved")
        from .training_loop import continuation_point

        try:
            continuation_point(plan, json.loads((Path(a.from_pipeline) / "training_log.json").read_text()))
        except ValueError as e:
            raise SystemExit(f"--from-pipeline {a.from_pipeline}: {e}") from None
    if a.arch == "dit":
        from . import train_dit

        return train_dit.main(a)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    ckpt = Checkpointer(Path(str(out) + ".ckpt"))
    log_path = ckpt.folder / "log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    t0 = time.time()
    scenes, images = make_dataset(a.n_images, a.seed)
    tokenizer = build_tokenizer(TEXT_CONFIG["max_position_embeddings"])
    vae = train_vae(images, ckpt, a.vae_steps, 64, a.seed, log)
    vae.eval()
    cache = ckpt.folder / "latents.safetensors"  # encoded once, reused when resuming
    if cache.exists():
        from safetensors.torch import load_file

        latents = load_file(cache)["latents"]
    else:
        from safetensors.torch import save_file

        latents = encode_all(vae, images)
        save_file({"latents": latents.contiguous()}, cache)
    scaling = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scaling)
    log["scaling_factor"] = scaling
    log_path.write_text(json.dumps(log, indent=1))
    unet, text, _ = train_denoiser(scenes, latents * scaling, tokenizer, ckpt, cycles_from_args(a), a.batch,
                                   a.seed + 1, log)
    save_pipeline(out, vae, unet, text, tokenizer)
    log.update(n_images=a.n_images, batch=a.batch, vae_steps=a.vae_steps, threads=a.threads,
               wall_seconds_this_run=time.time() - t0,
               parameters={"vae": sum(p.numel() for p in vae.parameters()),
                           "unet": sum(p.numel() for p in unet.parameters()),
                           "text_encoder": sum(p.numel() for p in text.parameters())})
    log_path.write_text(json.dumps(log, indent=1))
    (out / "training_log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps({k: v for k, v in log.items() if k != "loss_curve"}, indent=1))


if __name__ == "__main__":
    main()
