"""Writes notebooks/01_information_decomposition.ipynb."""
from nbtools import code, md, parameters, write_notebook

cells = [
md("""# 01 · Information decomposition: which words the model used, and where

**What you will learn**
- the I-MMSE idea: *information = ½ × the area between two denoising-error curves* (exact for a Gaussian);
- to measure how much a prompt, and each word given the rest of the prompt, tells the model about an image (nats/bits,
  with standard errors), and to draw it per pixel;
- three uses from Kong et al. (ICLR 2024): unsupervised **localisation** of words, **caption scoring** of swapped captions,
  and **prompt intervention**, each checked against the toy world's ground truth.

**Prerequisites**: `00_tour`. **Model**: the bundled toy pipeline by default (any SD 1.x/2.x via `model`).
**Time**: about 3 minutes on a laptop CPU (`fast=True`: under 1 minute); a GPU makes the full counts quick."""),
parameters("""# Parameters (papermill overrides these)
model = "toy"
device = "auto"
seed = 0
prompt = "a big red circle left of a small blue square"
word = "red"               # the word whose conditional information we follow
n = 64                     # (α, ε) samples per estimate
form = "orthogonal"        # "orthogonal" (low variance, the published choice for maps) or "standard"
source = "render"          # localisation images: "render" (the world's, exact masks) or "generated" (checker's masks)
n_localisation = 100       # images in the localisation study
n_captions = 100           # of those, images used for caption scoring
n_intervention = 40        # of those, images used for prompt intervention
steps = 25
guidance = 3.0
fast = False               # small counts (the tests use this)
output_dir = \"\""""),
code("""if fast:
    n, n_localisation, n_captions, n_intervention, steps = 16, 12, 12, 6, 15

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import nbhelpers as nbh
from nbhelpers import captions, closed_form, info, intervention, localisation, plotting, widgets
from nbhelpers.report import write_metrics

m = nbh.load_model(model, device=device)
m"""),
md("""## 1. The idea: information is a gap in denoising error

Add Gaussian noise to an image $x$ at log-SNR $\\alpha$: $z_\\alpha = \\sqrt{\\sigma(\\alpha)}\\,x + \\sqrt{\\sigma(-\\alpha)}\\,\\epsilon$.
The best possible noise estimate has an error, the MMSE, that depends on what else the denoiser knows. Knowing a caption $y$
can only help, and the I-MMSE relation makes this exact:

$$ I(x; y) = \\tfrac12 \\int \\big(\\mathrm{mmse}(\\alpha) - \\mathrm{mmse}(\\alpha \\mid y)\\big)\\, d\\alpha .$$

For a Gaussian everything is known in closed form, so we can watch the estimator hit the exact value.
Here $x \\sim N(0, 1)$ and $y = x + N(0, 0.25)$."""),
code("""G = closed_form.GaussianDenoiser(torch.eye(1), torch.eye(1), 0.25 * torch.eye(1))
alphas = torch.linspace(-8, 10, 200)
fig = plotting.mmse_figure(alphas, {"mmse(α)": G.mmse(alphas, False), "mmse(α | y)": G.mmse(alphas, True)},
                           fill=("mmse(α)", "mmse(α | y)"), title=f"Gaussian: I(x; y) = {G.mi():.3f} nats")
plotting.save_figure(fig, output_dir, "immse_gaussian")
plt.show()

sampler = info.LogSNRSampler(loc=1.0, scale=2.0, clip=4.0)
xs, ys = G.sample(4000, torch.Generator().manual_seed(seed))
gauss = info.information_terms(G, xs, {"none": G.unconditional(), "y": ys}, {"I": ("none", "y")}, n=1,
                               sampler=sampler, batch_size=4000, keep_map=False)["I"]
print(f"estimate {gauss}; exact on the truncated α-range {G.truncated_mi(*sampler.range):.3f}; "
      f"exact over all α {G.mi():.3f} nats")"""),
md("""The estimate agrees with the exact value on the α-range it integrates over; the small difference to the full
integral is the known truncation bias. For a diffusion model we cannot compute the MMSE, but the trained denoiser *is*
an MMSE estimator, so the same recipe applies.

## 2. Information in a generated image, word by word

We generate an image, then estimate in **one shared pass** (the same noise for every condition):
- $i(x; \\text{prompt})$ — everything the prompt says about this image (against the empty prompt);
- $i(x; w \\mid \\text{rest})$ for each word $w$ — what the word adds once the rest of the prompt is known
  (the word is deleted from the prompt for the "rest").

Each has a per-pixel map that sums to it."""),
code("""gen = m.generate(prompt, seed=seed, steps=steps, guidance=guidance)
image = gen.images[0]
pi = info.prompt_information(m, image, prompt, n=n, form=form, seed=seed)
pi.to("bits").table()"""),
code("""size = image.shape[0]
content = [w for w in pi.words if w not in ("a", "of", "the")]
fig = plotting.maps_figure(image, {w: pi.words[w].upsampled_map(size) for w in content},
                           {w: f"{pi.words[w].value:.2f} nats" for w in content})
plotting.save_figure(fig, output_dir, "word_maps")
plt.show()"""),
md("""Colour and shape words light up *their* object; relation words light up both. Where along the noise levels does the
information sit? The α-curve shows the (half) MMSE gap per noise level: attributes are decided at middle noise levels."""),
code("""r_word = pi.words[word]
fig = plotting.alpha_curve_figure({f"{word} | rest": info.mi_curve(r_word), "whole prompt": info.mi_curve(pi.prompt)})
plt.show()
print(f"i(x; {word} | rest) = {r_word.value:.3f} ± {r_word.stderr:.3f} nats = {r_word.to('bits').value:.3f} bits")"""),
md("""## 3. Explore

Pick a word to see its conditional-information map beside the whole prompt's, and both α-curves."""),
code("""widgets.word_map_explorer(image, pi)"""),
md("""## 4. Three applications

### 4a. Localisation without supervision
For two-object images (the world's own renders with exact masks by default; `source="generated"` uses generations that
the checker reads as fully correct, with the checker's masks), we localise every word that names one object
(its colour and noun) with four maps: the word's conditional information (**cmi**), the whole prompt's information
(**mi**, the same for every word), cross-attention (**attention**, DAAM-style) and their mean (**attention+cmi**), against the
object's true mask. We report the published score (mIoU at the best of 50 thresholds, chosen on the evaluation set itself),
the honest one (threshold chosen on one half, scored on the other), and the threshold-free AUROC."""),
code("""if source == "generated":
    scenes, images, masks = localisation.generated_pairs(m, n_localisation, seed=seed, steps=steps, guidance=guidance)
else:
    scenes, images, masks = localisation.world_pairs(n_localisation, seed=seed)
loc = localisation.localisation_study(m, scenes, images, masks, n=n, seed=seed)
summary = loc.summary()
summary.round(3)"""),
md("""Colour words and shape words behave differently, and the world tells us why. A colour word's information covers its
whole object (every pixel of the object changes with the colour). A shape word's information lies only where the shapes
differ: a big circle, square and triangle at one place share most of their interior. The pixels that would change with
another shape (`localisation.shape_difference_mask`) overlap the object's mask with an IoU of only about 0.3, so even a
perfect shape-word map cannot score a high mIoU against the object's mask. Judge shape words by AUROC, colour words
by mIoU."""),
code("""bound = np.mean([nbh.metrics.iou(localisation.shape_difference_mask(scenes[r["image"]], r["object"]), masks[r["image"]][r["object"]])
                 for r in loc.records if r["kind"] == "noun"])
by_kind = {kind: loc.summary(kind).loc[["cmi", "attention", "attention+cmi"]] for kind in ("colour", "noun")}
print(f"a perfect shape-word map scores IoU {bound:.2f} against the object's mask")
pd.concat(by_kind, names=["words"]).round(3)"""),
code("""k = 0
w0, obj0 = localisation.localisation_words(scenes[k])[0]
one = info.prompt_information(m, images[k], scenes[k].caption(), words=[w0], n=n, seed=seed)
att = nbh.attention.word_attention_maps(m, images[k], scenes[k].caption(), words=[w0], seed=seed)
fig = plotting.maps_figure(images[k], {"true mask": masks[k][obj0].astype(float),
                                       f"cmi '{w0}'": one.words[w0].upsampled_map(size),
                                       f"attention '{w0}'": nbh.metrics.upsample(att[w0], size)},
                           {"true mask": scenes[k].caption()})
plotting.save_figure(fig, output_dir, "localisation_example")
plt.show()"""),
md("""### 4b. Caption scoring
Does the model know *which* object is red? For each image we compare the true caption with the same words after swapping
the two colours (**attribute** binding) or the two objects around the relation (**relation** order). The caption with more
information about the image wins; chance is 50 %."""),
code("""cap = captions.caption_scoring_study(m, scenes[:n_captions], images[:n_captions], n=n, seed=seed)
acc = cap.accuracy()
fig = plotting.interval_bars({k: (v["accuracy"], v["ci95"]) for k, v in acc.items()}, chance=0.5,
                             title=f"caption scoring (95 % Wilson intervals, n = {len(scenes[:n_captions])} images)")
plotting.save_figure(fig, output_dir, "caption_scoring")
plt.show()
acc"""),
md("""### 4c. Prompt intervention
Invert each image to noise (deterministic DDIM), regenerate it from that same noise with and without a word, and measure
where the image changes. If the information map is right, the pixels that change are the pixels the word informs."""),
code("""words_iv = [localisation.localisation_words(s)[0][0] for s in scenes[:n_intervention]]
iv = intervention.intervention_study(m, images[:n_intervention], [s.caption() for s in scenes[:n_intervention]],
                                     words_iv, n=n, steps=steps, seed=seed)
corr = iv.correlations()
fig = plotting.scatter_figure([r["cmi"] for r in iv.records], [r["change"] for r in iv.records],
                              "i(x; word | rest) (nats)", "change when the word is removed",
                              f"image level r = {corr['image_level']['r']:.2f}; pixel level r = {corr['pixel_level']['r']:.2f}")
plotting.save_figure(fig, output_dir, "intervention")
plt.show()
corr"""),
md("""## 5. Check against the toy world's truth
On the toy model these must hold: information maps find the words' objects far better than chance and better than the
whole image; the swapped captions lose more often than not; removing a word changes the image where its information is."""),
code("""metrics = {
    "model": model, "prompt": prompt, "word": word, "units": "nats",
    "cmi_word": {"value": r_word.value, "stderr": r_word.stderr},
    "mi_prompt": {"value": pi.prompt.value, "stderr": pi.prompt.stderr},
    "gaussian_check": {"estimate": gauss.value, "stderr": gauss.stderr, "exact_truncated": G.truncated_mi(*sampler.range)},
    "localisation_mIoU": summary["mIoU (calibrated threshold)"].to_dict(),
    "localisation_mIoU_best_threshold": summary["mIoU (best threshold)"].to_dict(),
    "localisation_AUROC": summary["AUROC"].to_dict(),
    "localisation_by_word_kind": {k: v.to_dict(orient="index") for k, v in by_kind.items()},
    "shape_word_iou_bound": float(bound),
    "caption_accuracy": acc,
    "intervention": corr,
}
write_metrics(output_dir, metrics)
assert abs(gauss.value - G.truncated_mi(*sampler.range)) < 3 * gauss.stderr
if model == "toy":
    assert summary.loc["cmi", "AUROC"] > 0.75, summary
    assert summary.loc["cmi", "mIoU (best threshold)"] > summary.loc["whole image", "mIoU (best threshold)"] + 0.1
    assert corr["pixel_level"]["r"] > 0.1, corr
print("checks passed")
print(f"caption scoring: attribute swaps {acc['attribute']['accuracy']:.0%} (95 % CI {acc['attribute']['ci95'][0]:.0%}-"
      f"{acc['attribute']['ci95'][1]:.0%}); the target is clearly above chance, which needs a model that binds attributes")
print(f"CMI localisation mIoU: colour words {by_kind['colour'].loc['cmi', 'mIoU (best threshold)']:.2f} (target 0.6), "
      f"shape words {by_kind['noun'].loc['cmi', 'mIoU (best threshold)']:.2f} (a perfect map: {bound:.2f}); "
      f"AUROC {summary.loc['cmi', 'AUROC']:.2f}")
print(f"relation swaps: {acc['relation']['accuracy']:.0%} (95 % CI {acc['relation']['ci95'][0]:.0%}-"
      f"{acc['relation']['ci95'][1]:.0%}): 'A left of B' against 'B left of A'")"""),
md("""## Takeaways
- Information is measured, not guessed: in nats or bits, with a standard error, and it adds up across pixels.
- The *conditional* information of a word (given the rest) localises the word's object without any supervision.
- Scoring captions by information tests whether the model binds attributes to the right objects.
- Use the orthogonal form for maps (low variance, non-negative per pixel); the standard form is unbiased for one image.

## Exercises
1. Set `form = "standard"` and compare the standard errors and the maps. Which is noisier, and why?
2. Pick `word = "left"`: where is its information? Compare with a colour word.
3. In a prompt with *crimson red*, estimate i(x; red | rest). Why is it small? (Lesson 02 explains it as redundancy.)
4. Replace the word instead of deleting it (`policy="replace"` in `info.prompt_information`): do the numbers change?"""),
]
write_notebook("notebooks/01_information_decomposition.ipynb", cells)
