"""Conceptor training-step cost, measured in one run: precomputed latents (what ``decompose`` does) against
re-encoding the batch's images with the VAE at every step, and the share of a step spent in the UNet.

    python benchmarks/bench_conceptor.py [--model toy] [--steps 20] [--batch 6]
"""
import argparse
import os
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["NBHELPERS_CACHE"] = "0"  # time the computation, not the result cache

import nbhelpers as nbh  # noqa: E402
from nbhelpers import conceptor as C  # noqa: E402
from nbhelpers import conceptor_training as T  # noqa: E402
from nbhelpers.immse import add_noise  # noqa: E402
from nbhelpers.toyworld import concepts  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="toy")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--concept", default="nurse")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=6)
    a = ap.parse_args()
    m = nbh.load_model(a.model, device=a.device)
    toy = a.model == "toy"  # the world's template and vocabulary for the toy model, the method's defaults otherwise
    template = concepts.TEMPLATE if toy else C.DEFAULT_TEMPLATE
    vocabulary = concepts.vocabulary() if toy else None
    images = C.concept_images(m, a.concept, list(range(a.batch * 2)), template, steps=10)
    latents = m.encode_image(images)
    dic = C.build_dictionary(m, a.concept, images, latents.cpu(), vocabulary, scorer="text", template=template)
    emb = dic.embeddings.to(m.device)
    mlp = T.CoefficientMLP(emb.shape[1], 100, emb.mean(0), emb.std(0)).to(m.device)
    opt = torch.optim.AdamW(mlp.parameters(), lr=1e-3, **({"fused": True} if m.device.type == "cuda" else {}))
    g = torch.Generator("cpu").manual_seed(0)

    def step(reencode: bool, unet_only: bool = False):
        idx = torch.randint(0, len(images), (a.batch,), generator=g)
        x = m.encode_image(images[idx.numpy()]) if reencode else latents[idx.to(latents.device)]
        t = torch.randint(0, 1000, (a.batch,), generator=g).double()
        al = m.logsnr_of(t)
        e = torch.randn(x.shape, generator=g)
        z = add_noise(x.cpu(), al, e).to(m.device)  # as train_mixture does
        e = e.to(m.device)
        if unet_only:
            with torch.no_grad():
                cond = T.encode_with_token(m, T.pseudo_token(mlp(emb), emb, dic.target_norm), template)
            cond = cond.detach().requires_grad_(True)
        else:
            cond = T.encode_with_token(m, T.pseudo_token(mlp(emb), emb, dic.target_norm), template)
        loss = torch.nn.functional.mse_loss(m.eps(z, al, cond.expand(a.batch, -1, -1), grad=True), e)
        opt.zero_grad()
        loss.backward()
        if not unet_only:
            opt.step()

    def timed(**kw):
        step(**kw)  # warm-up
        if m.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step(**kw)
        if m.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / a.steps

    with T.frozen(m):
        pre = timed(reencode=False)
        re = timed(reencode=True)
        unet = timed(reencode=False, unet_only=True)
    print(f"model {a.model} on {m.device} ({m.dtype}), batch {a.batch}, {a.steps} steps each")
    print(f"step with precomputed latents : {pre * 1e3:8.1f} ms")
    print(f"step re-encoding with the VAE : {re * 1e3:8.1f} ms   (ratio {re / pre:.2f}x slower)")
    print(f"UNet forward+backward alone   : {unet * 1e3:8.1f} ms   ({100 * unet / pre:.0f} % of a step)")


if __name__ == "__main__":
    main()
