"""Benchmarks of the information estimator, printed as ratios measured in one run.

    python benchmarks/bench_info.py [--model toy] [--quick]

1. Overhead: wall time of ``information_terms`` ÷ wall time of the bare UNet forward passes it makes
   (same number of calls, same batch). Goal ≤ 1.10.
2. Sample efficiency: UNet evaluations needed to reach the same standard error on a word's CMI,
   ours (orthogonal form, stratified α, shared noise, interpolated timesteps) vs the published
   configuration (standard form, independent α, nearest trained timestep; also shared noise).
   Evaluations needed ∝ variance per evaluation, so the ratio is (SE² × evaluations) theirs ÷ ours.
   Goal ≥ 4.
3. With CUDA: the same overhead on a Stable-Diffusion-2.1-sized UNet (random weights, 64×64 latents,
   fp16), with absolute times.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["NBHELPERS_CACHE"] = "0"  # time the computation, not the result cache

from nbhelpers import load_model  # noqa: E402
from nbhelpers.immse import LogSNRSampler, information_terms  # noqa: E402
from nbhelpers.toyworld import world  # noqa: E402


class NearestTimestep:
    """The published timestep handling: the UNet sees the trained timestep nearest to α."""

    def __init__(self, model):
        self.model = model
        self.latent_shape = model.latent_shape
        self.logsnr_range = model.logsnr_range

    def eps(self, z, logsnr, cond):
        t = self.model.timestep_of(logsnr).round()
        return self.model.eps(z, self.model.logsnr_of(t), cond)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def overhead(model, x, conds, n, batch, repeats=3):
    """(estimator seconds, bare UNet seconds, calls) for the same calls."""
    pairs = {"cmi": ("without", "full")}
    information_terms(model, x, conds, pairs, n=batch, batch_size=batch)  # warm-up
    unet = model.pipe.unet
    K = len(conds)
    cond = torch.cat([conds[k] for k in conds]).repeat_interleave(batch, 0).to(model.device, model.dtype)
    z = torch.randn(K * batch, *model.latent_shape, device=model.device, dtype=model.dtype)
    t = torch.full((K * batch,), 500.0, device=model.device)
    calls = n // batch
    best_est, best_bare = float("inf"), float("inf")
    for _ in range(repeats):
        _sync(model.device)
        t0 = time.perf_counter()
        information_terms(model, x, conds, pairs, n=n, batch_size=batch)
        _sync(model.device)
        best_est = min(best_est, time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad(), model._autocast():
            for _ in range(calls):
                unet(z, t, encoder_hidden_states=cond)
        _sync(model.device)
        best_bare = min(best_bare, time.perf_counter() - t0)
    return best_est, best_bare, calls


def efficiency(model, x, conds, n, seeds):
    pairs = {"cmi": ("without", "full")}
    ours, theirs = [], []
    for s in range(seeds):
        ours.append(information_terms(model, x, conds, pairs, n=n, seed=s, form="orthogonal", keep_map=False)["cmi"])
        theirs.append(information_terms(NearestTimestep(model), x, conds, pairs, n=n, seed=s, form="standard",
                                        stratified=False, keep_map=False)["cmi"])
    # pooled variance per evaluation across seeds (each estimate: n samples × 2 conditions)
    var_ours = sum(r.stderr ** 2 for r in ours) / seeds
    var_theirs = sum(r.stderr ** 2 for r in theirs) / seeds
    mean = lambda rs: sum(r.value for r in rs) / len(rs)  # noqa: E731
    return var_theirs / var_ours, mean(ours), mean(theirs), ours[0].stderr, theirs[0].stderr


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--quick", action="store_true", help="fewer samples (CI smoke run)")
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    model = load_model(a.model, device="cpu")
    scene = world.with_plain_red(world.sample_scenes(1, seed=3, kind="pair")[0])
    prompt, word = scene.caption(), scene.objects[0].colour
    x = model.encode_image(scene.render())
    texts = {"full": prompt, "without": model.remove_word(prompt, word)}
    conds = {k: model.condition(v) for k, v in texts.items()}
    batch = 32
    n = 128 if a.quick else 512
    est, bare, calls = overhead(model, x, conds, n, batch)
    print(f"# information estimator on {a.model!r}: prompt {prompt!r}, word {word!r}")
    print(f"overhead: estimator {est:.3f} s / bare UNet {bare:.3f} s for {calls} calls of batch {2 * batch} "
          f"= {est / bare:.3f} (goal <= 1.10)")
    ratio, m_ours, m_theirs, se_o, se_t = efficiency(model, x, conds, 128 if a.quick else 512, 2 if a.quick else 4)
    print(f"sample efficiency: published/ours variance per UNet evaluation = {ratio:.2f}x fewer evaluations "
          f"for the same standard error (goal >= 4); CMI ours {m_ours:.3f} (se {se_o:.3f}) vs published "
          f"{m_theirs:.3f} (se {se_t:.3f}) nats")
    if torch.cuda.is_available():
        from diffusers import UNet2DConditionModel

        cfg = dict(sample_size=64, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20),
                   use_linear_projection=True, block_out_channels=(320, 640, 1280, 1280))
        unet = UNet2DConditionModel(**cfg).to("cuda", torch.float16)
        z = torch.randn(2 * batch, 4, 64, 64, device="cuda", dtype=torch.float16)
        c = torch.randn(2 * batch, 77, 1024, device="cuda", dtype=torch.float16)
        t = torch.full((2 * batch,), 500.0, device="cuda")
        with torch.no_grad():
            unet(z, t, c)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(5):
                unet(z, t, c)
            torch.cuda.synchronize()
        print(f"GPU: SD-2.1-sized UNet fp16, batch {2 * batch} at 64x64 latents: "
              f"{(time.perf_counter() - t0) / 5 * 1000:.1f} ms per call")
    else:
        print("GPU: no CUDA on this machine; the SD-2.1-sized measurement is skipped")


if __name__ == "__main__":
    main()
