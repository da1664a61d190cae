"""Writes notebooks/02_partial_information_decomposition.ipynb."""
from nbtools import code, md, parameters, write_notebook

cells = [
md("""# 02 · Partial information decomposition: redundant, unique and synergistic words

**What you will learn**
- how two words can share information (**redundancy**), carry their own (**unique**), or mean something only together
  (**synergy**), with the textbook XOR and copy examples;
- to decompose what two prompt words tell a diffusion model about an image, as numbers (nats, with standard errors) and as
  pixel maps, after DiffusionPID (Dewan et al., NeurIPS 2024);
- to recognise synonyms (redundant), context-dependent words (synergistic), and to check it by intervention.

**Prerequisites**: `01_information_decomposition`. **Model**: the bundled toy pipeline (any SD 1.x/2.x via `model`).
**Time**: about 2 minutes on a laptop CPU (`fast=True`: under a minute).

**The measure.** With $i_1 = i(x; y_1\\mid c)$, $i_2 = i(x; y_2 \\mid c)$ and $i_{12} = i(x; y_1, y_2\\mid c)$ from one shared
noise draw, we use Williams & Beer's *minimum specific information*: redundancy $R = \\min(i_1, i_2)$, unique
$U_k = i_k - R$, synergy $S = i_{12} - i_1 - i_2 + R$. The context $c$ is the rest of the prompt (CPID) or nothing (PID)."""),
parameters("""# Parameters (papermill overrides these)
model = "toy"
device = "auto"
seed = 0
prompt = "a big red circle left of a small blue square"
word1 = "red"
word2 = "blue"
context = "rest"       # "rest" (conditioned on the rest of the prompt) or "none" (the two words alone)
n = 48                 # (α, ε) samples per estimate
n_prompts = 12         # prompts in the synonym and homonym comparisons
n_textbook = 200_000   # samples per pointwise term in the textbook cases (0.02-bit precision)
steps = 25
guidance = 3.0
fast = False
output_dir = \"\""""),
code("""if fast:
    n, n_prompts, n_textbook, steps = 16, 4, 20_000, 15

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

import nbhelpers as nbh
from nbhelpers import intervention, pid, plotting, widgets
from nbhelpers.metrics import upsample
from nbhelpers.report import write_metrics
from nbhelpers.toyworld import world

m = nbh.load_model(model, device=device)
LN2 = np.log(2)"""),
md("""## 1. The idea, on cases with known answers

Two fair bits $y_1, y_2$ and a target $x$:
- **XOR** ($x = y_1 \\oplus y_2$): neither bit alone says anything about $x$; together they say everything → pure synergy.
- **copy** ($x = (y_1, y_2)$): each bit tells its own half. Under $I_{\\min}$ this shows as 1 bit of redundancy *and* 1 bit of
  synergy — a known quirk of the measure that we keep in mind when reading numbers.
- **AND**, **redundant** ($x = y_1 = y_2$) and **unique** ($x = y_1$) complete the classic set.

We embed $x$'s values as points in $\\mathbb{R}^8$, use the exact denoiser, and estimate every pointwise term with the same
I-MMSE estimator used on images. The estimates should land on the published values."""),
code("""rows = []
for case, published in pid.PUBLISHED_IMIN_BITS.items():
    p = pid.discrete_pid_case(case)
    support = torch.randn(p.shape[0], 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    est = pid.discrete_pid_with_denoiser(p, support, n=n_textbook, seed=seed)
    for term in pid.TERMS:
        rows.append({"case": case, "term": term, "source": "estimated", "bits": est[term] / LN2})
        rows.append({"case": case, "term": term, "source": "published", "bits": published[term]})
textbook = pd.DataFrame(rows)
fig = plotting.grouped_bars(textbook[textbook.source == "estimated"], x="case", hue="term", y="bits",
                            title="I_min PID of the textbook cases, estimated with the diffusion estimator", ylabel="bits")
plotting.save_figure(fig, output_dir, "textbook_pid")
plt.show()
textbook.pivot_table(index=["case", "term"], columns="source", values="bits").round(3)"""),
md("""## 2. Two words of a generated image

We generate the prompt's image and decompose what `word1` and `word2` tell the model about it. The maps show *where*:
each unique map should sit on its own object."""),
code("""image = m.generate(prompt, seed=seed, steps=steps, guidance=guidance).images[0]
r = pid.partial_information(m, image, prompt, word1, word2, context=context, n=n, seed=seed)
size = image.shape[0]
fig = plotting.maps_figure(image, {k: upsample(v, size) for k, v in r.maps.items()},
                           {k: f"{r.values[k]:.2f} ± {r.stderr[k]:.2f} nats" for k in pid.TERMS}, clip_negative=True)
plotting.save_figure(fig, output_dir, "pid_maps")
plt.show()
r.table().round(3)"""),
md("""## 3. Explore
Pick any two words of the prompt and the context mode (maps are clipped at zero for display; values are not)."""),
code("""widgets.pid_explorer(m, image, prompt, word1, word2, n=n, seed=seed)"""),
md("""## 4. Synonyms are redundant
In the toy world *crimson* means *red*. In "a ... crimson red circle ...", either word alone tells the colour, so almost all
of their joint information is redundant. For an unrelated pair (*red* and the shape word) at most half can be. We compare
the **redundant share** $R / i_{12}$ across prompts."""),
code("""rng = np.random.default_rng(seed)
items = []
for k in range(n_prompts):
    s = world.lone_scene("red", world.SHAPES[k % 3], list(world.SIZES)[k % 2], list(world.POSITIONS)[k % 5],
                         colour_word="crimson red", rng=rng)
    items.append((s.render(), s.caption(), "crimson", "red", "synonyms (crimson, red)"))
    items.append((s.render(), s.caption(), "red", s.objects[0].shape, "unrelated (red, shape)"))
syn = pid.pid_table(m, items, n=n, seed=seed)
fig = plotting.strip_compare(syn, x="label", y="redundant share", title="redundant share R / i12",
                             ylabel="R / i12")
plotting.save_figure(fig, output_dir, "synonyms")
plt.show()
syn.groupby("label")[["redundancy", "synergy", "i12", "redundant share"]].mean().round(3)"""),
md("""## 5. A homonym resolved by context is synergistic
*bat* is a triangle (the animal) at the top and a square (the club) at the bottom. Neither *bat* nor *top* alone fixes the
shape; together they do. Compared with a plain shape word and its position, the pair (*bat*, *top*) should show more synergy.

One caution first. With I_min, two words that inform *independently* (a shape word and a position word) also get a large
synergy, equal to the smaller of the two informations: the measure's copy-case quirk from section 1. So we compare
**S − R = i12 − i1 − i2**, the interaction information, which is the same under every PID: it is positive when the words
say more together than apart (synergy dominates) and negative when they overlap."""),
code("""items = []
for k in range(n_prompts):
    pos = "top" if k % 2 == 0 else "bottom"
    colour = list(world.COLOURS)[k % 5]
    bat = world.lone_scene(colour, world.HOMONYM_SHAPE[pos], "big", pos, noun="bat", rng=rng)
    plain = world.lone_scene(colour, world.HOMONYM_SHAPE[pos], "big", pos, rng=rng)
    items.append((bat.render(), bat.caption(), "bat", pos, "homonym (bat, position)"))
    items.append((plain.render(), plain.caption(), plain.objects[0].shape, pos, "plain (shape, position)"))
hom = pid.pid_table(m, items, n=n, seed=seed)
hom["S - R"] = hom["synergy"] - hom["redundancy"]  # = i12 - i1 - i2, the interaction information
fig = plotting.strip_compare(hom, x="label", y="S - R", title="synergy minus redundancy (nats)", ylabel="S − R (nats)")
plotting.save_figure(fig, output_dir, "homonyms")
plt.show()
hom.groupby("label")[["redundancy", "unique1", "unique2", "synergy", "S - R"]].mean().round(3)"""),
md("""## 6. Intervention: removing a redundant word changes little, removing a unique word changes a lot
We invert a *crimson red* image to noise and regenerate it from the same noise without *crimson* (redundant with *red*) and
without the shape word (unique)."""),
code("""s = world.lone_scene("red", "triangle", "big", "left", colour_word="crimson red")
x = m.encode_image(s.render())
z_T = intervention.ddim_invert(m, x, s.caption(), steps=steps)
variants = [s.caption(), m.remove_word(s.caption(), "crimson"), m.remove_word(s.caption(), "triangle")]
out = intervention.ddim_sample(m, z_T, variants, steps=steps)
change = {v: float((out[i] - out[0]).pow(2).mean()) for i, v in enumerate(variants)}
fig = plotting.image_grid(m.decode(out), [f"{v}\\nchange {change[v]:.3f}" for v in variants], ncols=3, size=2.4)
plotting.save_figure(fig, output_dir, "intervention")
plt.show()"""),
md("""## 7. Check against the toy world's truth"""),
code("""share = syn.groupby("label")["redundant share"].mean()
synergy = hom.groupby("label")["S - R"].mean()
metrics = {"model": model, "prompt": prompt, "words": [word1, word2], "context": context, "units": "nats",
           "pid": {k: {"value": r.values[k], "stderr": r.stderr[k]} for k in pid.TERMS},
           "textbook_max_error_bits": float(textbook.pivot_table(index=["case", "term"], columns="source", values="bits")
                                            .diff(axis=1).abs().max().max()),
           "synonym_redundant_share": share.to_dict(), "homonym_interaction_information": synergy.to_dict(),
           "intervention_change": {"without redundant word": change[variants[1]], "without unique word": change[variants[2]]}}
write_metrics(output_dir, metrics)
assert metrics["textbook_max_error_bits"] < (0.02 if not fast else 0.05), textbook
if model == "toy":
    assert share["synonyms (crimson, red)"] > share["unrelated (red, shape)"] + 0.2, share
    assert change[variants[1]] < change[variants[2]], change
    if not fast:
        assert synergy["homonym (bat, position)"] > synergy["plain (shape, position)"], synergy
print("checks passed")
print("S - R: homonym (bat, position)", round(synergy["homonym (bat, position)"], 3), "nats; plain (shape, position)",
      round(synergy["plain (shape, position)"], 3), "nats")"""),
md("""## Takeaways
- PID splits what two words say into shared, own and joint parts; the estimator reproduces the textbook values.
- Synonyms are redundant (their joint information is almost all shared); a homonym and the word that resolves it are
  synergistic; each word's unique information sits on its own object.
- The minimum-information measure credits independent words with redundancy (the copy case), so compare *shares* and
  *contrasts*, not raw redundancy alone.

## Exercises
1. Switch `context` to `"none"`: the words alone against the empty prompt. What changes for *red*/*blue*, and why?
2. Decompose (*warm*, *nurse*) in "a warm nurse on the left". A nurse is red 85 % of the time: is *warm* redundant with
   *nurse*? Compare (*cool*, *nurse*). (This is the bias lens of lesson 05.)
3. Try *crimson* and *red* in a two-object prompt where *red* describes the other object."""),
]
write_notebook("notebooks/02_partial_information_decomposition.ipynb", cells)
