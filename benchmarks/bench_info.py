"""Benchmarks of the information estimator against the published reference, measured in one run.

    python benchmarks/bench_info.py [--model toy] [--quick] [--seeds 40]

Both sides run in this process, interleaved seed by seed, on the same denoiser, images and conditions.

1. **Sample efficiency** (goal ≥ 4 for both forms): UNet evaluations the reference needs for the
   standard error we reach with the same number. The reference is the published configuration
   (Kong et al.): the noise ε shared across conditions, i.i.d. log-SNR from the truncated logistic
   (loc 1, scale 2, clip 3), one ε per log-SNR, no stratification. Ours: the defaults of
   ``information_terms`` (antithetic ε pairs, two log-SNRs per stratum). Both sides use the same form,
   the same number of samples and the same denoiser, so the ratio is the ratio of the *spreads across
   seeds* (variance of the estimate over ``--seeds`` independent runs), never of reported errors; its
   90 % interval comes from the F distribution. Cases: a word's CMI on the toy model (one world
   image), and the closed-form Gaussian of the science tests (one sample, and eight samples averaged).
2. **Calibration** of the reported standard errors: spread across seeds ÷ mean reported error
   (goal 0.85–1.15), for both sides.
3. **Overhead** (goal ≤ 1.05): the public call ``info.conditional_mutual_information`` (result cache
   off) against the bare calls it needs — the text encoder on the two prompts, the VAE on the image,
   the same number of UNet calls of the same batch — alternated, ≥ 5 repeats, median and min–max.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["NBHELPERS_CACHE"] = "0"  # time the computation, not the result cache

from scipy import stats  # noqa: E402

from nbhelpers import info, load_model  # noqa: E402
from nbhelpers.closed_form import GaussianDenoiser  # noqa: E402
from nbhelpers.immse import LogSNRSampler, information_terms  # noqa: E402
from nbhelpers.toyworld import world  # noqa: E402

REFERENCE = dict(stratified=False, antithetic=False, sampler=LogSNRSampler(1.0, 2.0, 3.0))  # uniform_share 0
EFFICIENCY_GOAL, OVERHEAD_GOAL, CALIBRATION = 4.0, 1.05, (0.85, 1.15)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def efficiency(denoiser, x, conds, form, n, seeds):
    """Spread across seeds of both designs at equal evaluations; returns a dict of figures."""
    pair = {"t": ("w", "s")}
    runs = {"reference": [], "ours": []}
    for s in range(seeds):  # interleaved: one reference run, then ours, per seed
        runs["reference"].append(information_terms(denoiser, x, conds, pair, n=n, form=form, seed=s,
                                                   keep_map=False, **REFERENCE)["t"])
        runs["ours"].append(information_terms(denoiser, x, conds, pair, n=n, form=form, seed=s, keep_map=False)["t"])
    out = {}
    for side, rs in runs.items():
        v = np.array([r.value for r in rs])
        out[side] = dict(mean=v.mean(), var=v.var(ddof=1), calibration=v.std(ddof=1) / np.mean([r.stderr for r in rs]),
                         evaluations=rs[0].params["evaluations"])
    assert out["reference"]["evaluations"] == out["ours"]["evaluations"]
    ratio = out["reference"]["var"] / out["ours"]["var"]
    lo, hi = (ratio / stats.f.ppf(q, seeds - 1, seeds - 1) for q in (0.95, 0.05))
    out["ratio"], out["ratio_ci90"] = ratio, (lo, hi)
    return out


def print_efficiency(label, form, e, n):
    ok = "PASS" if e["ratio"] >= EFFICIENCY_GOAL else "FAIL"
    cal = " ".join(f"{side} {e[side]['calibration']:.2f}" for side in ("reference", "ours"))
    print(f"  {label:34s} {form:10s} efficiency {e['ratio']:5.2f}x (90% CI {e['ratio_ci90'][0]:.2f}-"
          f"{e['ratio_ci90'][1]:.2f}) [{ok} goal >= {EFFICIENCY_GOAL:g}] | spread/reported error: {cal} | "
          f"means: ref {e['reference']['mean']:.3f}, ours {e['ours']['mean']:.3f} nats | "
          f"{e['ours']['evaluations']} evaluations each")


def overhead(model, image, prompt, word, n, batch, repeats):
    """(public-call seconds, bare seconds) per repeat, alternated."""
    without = model.remove_word(prompt, word)
    ids = model.tokenizer([prompt, without], padding="max_length", max_length=model.max_tokens, truncation=True,
                          return_tensors="pt").input_ids.to(model.device)
    unet, vae = model.pipe.unet, model.pipe.vae
    calls = -(-n // batch)
    z = torch.randn(2 * batch, *model.latent_shape, device=model.device, dtype=model.dtype)
    t = torch.full((2 * batch,), 500.0, device=model.device)
    img = model._image_tensor(image).to(model.device, model.dtype)

    def public():
        info.conditional_mutual_information(model, image, prompt, word, n=n, batch_size=batch)

    @torch.no_grad()
    def bare():
        cond = model.pipe.text_encoder(ids)[0].repeat_interleave(batch, 0)
        vae.encode(img).latent_dist.mean
        with model._autocast():
            for _ in range(calls):
                unet(z, t, encoder_hidden_states=cond)

    public(), bare()  # warm-up
    times = {"public": [], "bare": []}
    for _ in range(repeats):
        for name, fn in (("public", public), ("bare", bare)):
            _sync(model.device)
            t0 = time.perf_counter()
            fn()
            _sync(model.device)
            times[name].append(time.perf_counter() - t0)
    return times, calls


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="toy")
    ap.add_argument("--quick", action="store_true", help="30 seeds, fewer samples, 5 timing repeats")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per efficiency figure (default 60; quick 30)")
    a = ap.parse_args(argv)
    seeds = a.seeds or (30 if a.quick else 60)
    print(f"# bench_info ({time.strftime('%Y-%m-%d')}), torch {torch.__version__}, {torch.get_num_threads()} threads")

    model = load_model(a.model, device="cpu")
    scene = world.with_plain_red(world.sample_scenes(1, seed=3, kind="pair")[0])
    prompt, word = scene.caption(), scene.objects[0].colour
    image = scene.render()
    x = model.encode_image(image)
    conds = {"w": model.condition(model.remove_word(prompt, word)), "s": model.condition(prompt)}
    n_toy = 32
    print(f"1-2. efficiency and calibration ({seeds} seeds each, reference vs ours at equal evaluations)")
    for form in ("standard", "orthogonal"):
        print_efficiency(f"toy CMI '{word}' (n={n_toy})", form, efficiency(model, x, conds, form, n_toy, seeds), n_toy)
    G = GaussianDenoiser.example()  # the 4-dimensional Gaussian of the science tests
    for n_images in (1, 8):
        xg, cg = G.sample(n_images, torch.Generator().manual_seed(3))
        gconds = {"w": None, "s": cg}
        for form in ("standard", "orthogonal"):
            print_efficiency(f"Gaussian 4-d, {n_images} sample(s) (n=32)", form,
                             efficiency(G, xg, gconds, form, 32, max(seeds, 100)), 32)

    n, batch, repeats = (128, 32, 5) if a.quick else (256, 32, 7)
    times, calls = overhead(model, image, prompt, word, n, batch, repeats)
    pub, bare = np.array(times["public"]), np.array(times["bare"])
    ratio = np.median(pub) / np.median(bare)
    ok = "PASS" if ratio <= OVERHEAD_GOAL else "FAIL"
    print(f"3. overhead: conditional_mutual_information(n={n}) median {np.median(pub):.3f} s "
          f"(min {pub.min():.3f}, max {pub.max():.3f}) / bare calls ({calls} UNet calls of batch {2 * batch}, "
          f"text encoder, VAE) median {np.median(bare):.3f} s (min {bare.min():.3f}, max {bare.max():.3f}) "
          f"= {ratio:.3f} [{ok} goal <= {OVERHEAD_GOAL}] over {repeats} alternated repeats")


if __name__ == "__main__":
    main()
