"""Fine-tuning stages for the bundled toy model, on the training loss, to bring its subject nouns' rates
closer to the world's. **Neither is part of the shipped model's recipe** (`make train-toy`): both were measured
and found not to fix the case they were written for; they are kept as tools for a longer run.

    python -m nbhelpers.toyworld.calibrate --model <copy of data/models/toy> --params embeddings --steps 300
    python -m nbhelpers.toyworld.calibrate --model <copy> --params all --kind-weights pair=2,subject=6 \
        --steps 1000 --lr 2e-4

The case: the jointly trained model draws "a lawyer" (a triangle, 50 % warm in the world) cool 65-83 % of the time
at guidance 1, near "a pilot" (also a triangle, planted 85 % cool; the two nouns' input embeddings have cosine 0.81),
so the bias audit (lesson 05) rightly flags a bias the world does not have.

- ``--params embeddings``: every weight frozen except the input-embedding rows of the subject nouns' tokens (6 nouns,
  7 tokens, 64 numbers each), on subject scenes. Prompts without a subject noun are encoded bit for bit as before
  (tested), so no other measurement of the model moves. Measured (300 steps, lr 1e-3): nurse 88 → 84 % warm, pilot
  90 → 76 % cool, lawyer unchanged (63 → 62 % cool, 96 seeds): the lawyer's problem is not in its embedding alone.
- ``--params all``: UNet and text encoder on all scene kinds with subject scenes up-weighted (measured with whole kinds
  drawn more often; now as extra draws that keep every caption's pictures, ``reweighting``), 10 % empty captions, EMA of the
  weights. Measured (1000 steps, subject ×6, peak lr 2e-4, 15 min on 2 threads): lawyer cool 64 % on seeds 0-239
  and 47 % on seeds 5000-5095 (59 % of the 285 read together). The audit at guidance 1 (seeds 0-59) then flagged
  doctor and teacher (cool 73 %, 70 %) and missed nurse (warm 64 %): no better, so it was not adopted. 1500 more
  steps (subject ×8) fixed lawyer's colour at guidance 3 (58 % cool) but left doctor and teacher flagged small
  (70 %, 73 %); not adopted either.

The model folder is rewritten in place (safetensors) and each run is appended to ``training_log.json``
(``fine_tuning``: steps, rate, subject-scene loss before and after, seconds).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from . import world
from .reweighting import KindSampler
from .train import SCHEDULE, cosine_lr, denoising_loss, encode_all, loss_weights, render_all


def subject_token_ids(tokenizer) -> list[int]:
    """Token ids that only subject nouns use (asserted: no other word of the world shares them)."""
    ids = {w: tokenizer(w).input_ids[1:-1] for w in world.vocabulary()}
    subject = sorted({i for w in world.SUBJECT_SHAPES for i in ids[w]})
    shared = {i for w, t in ids.items() if w not in world.SUBJECT_SHAPES for i in t} & set(subject)
    if shared:
        raise ValueError(f"subject-noun tokens {sorted(shared)} are shared with other words; calibrating them "
                         "would change other prompts")
    return subject


def _encode(vae, scenes) -> torch.Tensor:
    """Scaled latents (posterior means) of the scenes' images, (n, 4, 16, 16)."""
    with torch.no_grad():
        return encode_all(vae, render_all(scenes)) * vae.config.scaling_factor


def _training_data(model_dir: Path, vae, params: str, n_scenes: int, seed: int):
    """Subject scenes (``params="embeddings"``) or the first training stage's own scenes and latents
    (``"all"``: ``make_dataset(60000, 0)``, from ``<model>.ckpt/latents.safetensors`` when present)."""
    if params == "embeddings":
        scenes = world.sample_scenes(n_scenes, seed=seed + 31, split="train", kind="subject")
        return scenes, _encode(vae, scenes)
    scenes = world.sample_scenes(60000, seed=0, split="train")
    cache = Path(str(model_dir) + ".ckpt") / "latents.safetensors"
    if cache.exists():
        from safetensors.torch import load_file

        latents = load_file(cache)["latents"] * vae.config.scaling_factor
        if len(latents) == len(scenes):
            return scenes, latents
    return scenes, _encode(vae, scenes)


def calibrate(model_dir: Path, steps: int = 400, lr: float = 1e-3, batch: int = 64, n_scenes: int = 6000,
              seed: int = 0, threads: int | None = None, params: str = "embeddings",
              kind_weights: dict | None = None, ema: float = 0.995) -> dict:
    """Fine-tune the pipeline in ``model_dir`` in place on the denoising loss.

    ``params="embeddings"``: only the subject nouns' token-embedding rows, on subject scenes (every other
    prompt unchanged). ``params="all"``: UNet and text encoder on all scene kinds sampled with
    ``kind_weights`` (e.g. ``{"subject": 6}``), 10 % empty captions as in training, and an EMA
    (``ema``) of the weights saved (``"embeddings"`` saves the last weights: the rate decays to 0).
    Returns the record also written to ``training_log.json``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTextModel, CLIPTokenizer

    if params not in ("embeddings", "all"):
        raise ValueError(f"params must be 'embeddings' or 'all', not {params!r}")
    previous_threads = torch.get_num_threads()  # restored on return: the caller's setting is not ours to keep
    if threads:
        torch.set_num_threads(threads)
    try:
        model_dir = Path(model_dir)
        tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer")
        text = CLIPTextModel.from_pretrained(model_dir / "text_encoder")
        unet = UNet2DConditionModel.from_pretrained(model_dir / "unet")
        vae = AutoencoderKL.from_pretrained(model_dir / "vae").eval()
        sched = DDPMScheduler(**SCHEDULE)
        weight = loss_weights(sched)
        scenes, latents = _training_data(model_dir, vae, params, n_scenes, seed)

        table = text.get_input_embeddings().weight
        before = table.detach().clone()
        rows = subject_token_ids(tokenizer)
        if params == "embeddings":
            unet.eval()
            for p in list(unet.parameters()) + list(text.parameters()):
                p.requires_grad_(False)
            mask = torch.zeros(table.shape[0], 1)
            mask[rows] = 1.0
            table.requires_grad_(True)
            table.register_hook(lambda g: g * mask)  # only the subject rows ever receive a gradient
            # no EMA here: it would round the frozen rows; the last weights are saved (the rate decays to 0)
            trainable, sampler, p_empty, averaged = [table], KindSampler(scenes), 0.0, None
            opt = torch.optim.Adam(trainable, lr=lr, weight_decay=0.0)
        else:
            unet.train()
            text.train()
            trainable = [p for p in list(unet.parameters()) + list(text.parameters()) if p.requires_grad]
            sampler, p_empty = KindSampler(scenes, kind_weights), 0.1
            opt = torch.optim.AdamW(trainable, lr=lr, weight_decay=1e-2)
            averaged = EMAModel(trainable, decay=ema, use_ema_warmup=True, power=0.75)

        rng, gen = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
        subj = [i for i, sc in enumerate(scenes) if sc.kind == "subject"]
        eval_rng = np.random.default_rng(seed + 1)
        eval_idx = [eval_rng.choice(subj, batch) for _ in range(8)]

        def held_loss():  # on a fixed set of subject scenes, noise and captions
            r, g = np.random.default_rng(seed + 2), torch.Generator().manual_seed(seed + 2)
            with torch.no_grad():
                return float(np.mean([denoising_loss(unet, text, tokenizer, sched, weight, latents, scenes, i, r, g,
                                                     p_empty=0.0).item() for i in eval_idx]))

        t0, loss0 = time.time(), held_loss()
        for step in tqdm(range(steps), desc=f"fine-tune ({params})", mininterval=10):
            for grp in opt.param_groups:
                grp["lr"] = cosine_lr(step, steps, lr, warmup=min(50, steps // 10 + 1))
            idx, extra = sampler.draw(rng, batch)
            loss = denoising_loss(unet, text, tokenizer, sched, weight, latents, scenes, idx, rng, gen, p_empty, extra)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if params == "all":
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            opt.step()
            if averaged is not None:
                averaged.step(trainable)
        if averaged is not None:
            averaged.copy_to(trainable)
        unet.eval()
        text.eval()
        loss1 = held_loss()
        if params == "embeddings":
            others = torch.ones(table.shape[0], dtype=bool)
            others[rows] = False
            assert torch.equal(table.detach()[others], before[others]), "a non-subject embedding row moved"
        for p in trainable:
            p.requires_grad_(False)
        text.save_pretrained(model_dir / "text_encoder", safe_serialization=True)
        if params == "all":
            unet.save_pretrained(model_dir / "unet", safe_serialization=True)
        record = dict(params=params, steps=steps, peak_lr=lr, batch=batch, kind_weights=kind_weights,
                      ema=ema if params == "all" else None,
                      subject_loss_before=loss0, subject_loss_after=loss1, seconds=time.time() - t0,
                      subject_row_shift=float((table.detach()[rows] - before[rows]).norm(dim=1).mean()),
                      subject_row_norm=float(before[rows].norm(dim=1).mean()))
        log_path = model_dir / "training_log.json"
        log = json.loads(log_path.read_text()) if log_path.exists() else {}
        log.setdefault("fine_tuning", []).append(record)
        log_path.write_text(json.dumps(log, indent=1))
        return record
    finally:
        torch.set_num_threads(previous_threads)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="data/models/toy")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--params", choices=("embeddings", "all"), default="embeddings")
    ap.add_argument("--kind-weights", default="", help="scene-kind sampling weights for --params all, e.g. 'subject=6'")
    a = ap.parse_args(argv)
    from .train import _parse_weights

    print(json.dumps(calibrate(Path(a.model), a.steps, a.lr, a.batch, seed=a.seed, threads=a.threads, params=a.params,
                               kind_weights=_parse_weights(a.kind_weights)), indent=1))


if __name__ == "__main__":
    main()
