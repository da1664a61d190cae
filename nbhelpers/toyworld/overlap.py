"""Does each timestep method point at the object? A toy-world study built on :mod:`nbhelpers.timesteps`
and :mod:`nbhelpers.saliency`.

:func:`world_overlap_study` generates one-object world prompts, traces each generation and scores the colour
and noun words' cross-attention, DF-RISE and DF-CAM saliency against the object's mask that the world's
checker finds in the final image (AUROC, with a random map as the floor), and runs the deletion/insertion
test against random orders. The methods it calls know nothing of the world; this module supplies the
prompts and the masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..cache import cached
from ..metrics import auroc, bootstrap_ci, upsample
from ..saliency import faithfulness, gradcam_saliency, rise_saliency
from ..timesteps import trace
from . import world
from .checker import read_image


@dataclass
class OverlapStudy:
    """Per generated one-object image: how well each map picks out the object the checker finds
    (AUROC of map vs mask, 0.5 = a random map), and the deletion/insertion AUCs of the saliency
    maps against random orders. ``summary()`` gives means with bootstrap 95 % intervals."""

    records: list[dict]
    params: dict = field(default_factory=dict)

    def table(self):
        import pandas as pd

        return pd.DataFrame(self.records)

    def summary(self) -> dict:
        df = self.table()
        out = {}
        for col in [c for c in df.columns if c.startswith(("auroc", "deletion", "insertion", "beats"))]:
            v = df[col].dropna().to_numpy(float)
            if len(v):
                lo, hi = bootstrap_ci(lambda idx, v=v: float(v[idx].mean()), len(v), n_boot=1000)
                out[col] = {"mean": float(v.mean()), "ci": (lo, hi), "n": int(len(v))}
        return out


@cached("timesteps")
def world_overlap_study(model, n_images: int = 12, seed: int = 0, steps: int = 20, guidance: float = 3.0,
                        explain_step: int | None = None, n_masks: int = 128, n_random: int = 4) -> OverlapStudy:
    """On one-object toy-world prompts: trace each generation, take the colour and noun words'
    cross-attention (mean over steps), DF-RISE and DF-CAM saliency at ``explain_step`` (default:
    three quarters of the way), score each against the object's mask in the final image (the
    checker's blob) by AUROC, with a random map as the floor, and run the deletion/insertion test."""
    explain_step = int(0.75 * steps) if explain_step is None else explain_step
    scenes = [world.with_plain_red(s) for s in world.sample_scenes(n_images, seed=seed, split="all", kind="single")]
    g = np.random.default_rng(seed)
    records = []
    for i, sc in enumerate(tqdm(scenes, desc="overlap", mininterval=5)):
        o = sc.objects[0]
        prompt = sc.caption()
        tr = trace(model, prompt, seed=seed + i, steps=steps, guidance=guidance,
                   words=[o.colour_word or o.colour, o.noun])
        blobs = read_image(tr.image, max_objects=1)
        if not blobs:
            records.append({"prompt": prompt, "found": False})
            continue
        mask = blobs[0].mask
        size = mask.shape[0]
        rise = rise_saliency(model, tr, explain_step, n_masks=n_masks, seed=seed + i)
        cam = gradcam_saliency(model, tr, explain_step)
        rec = {"prompt": prompt, "found": True,
               "auroc_attention_colour": auroc(upsample(tr.word_map(tr.words[0]), size), mask),
               "auroc_attention_noun": auroc(upsample(tr.word_map(tr.words[1]), size), mask),
               "auroc_rise": auroc(upsample(rise.map, size), mask),
               "auroc_cam": auroc(upsample(cam.map, size), mask),
               "auroc_random_map": auroc(g.random(mask.shape), mask)}
        f_rise = faithfulness(model, tr, rise, n_random=n_random, seed=seed + i)
        f_cam = faithfulness(model, tr, cam, n_random=0, seed=seed + i)  # same step: share RISE's random orders
        for name, f in (("rise", f_rise), ("cam", f_cam)):
            rec[f"deletion_auc_{name}"] = f.deletion_auc
            rec[f"deletion_auc_random_{name}"] = f_rise.random_deletion_auc
            rec[f"insertion_auc_{name}"] = f.insertion_auc
            rec[f"insertion_auc_random_{name}"] = f_rise.random_insertion_auc
            rec[f"beats_random_deletion_{name}"] = float(f.deletion_auc < f_rise.random_deletion_auc)
        records.append(rec)
    return OverlapStudy(records, dict(n_images=n_images, seed=seed, steps=steps, guidance=guidance,
                                      explain_step=explain_step, n_masks=n_masks))
