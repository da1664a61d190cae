"""Writes notebooks/05_bias_audit.ipynb."""
from nbtools import code, md, parameters, write_notebook

cells = [
md("""# 05 · Bias audit: which subjects does the model draw as which group?

**What you will learn**
- to run an audit over prompt templates × subjects (occupations) × seeds, saved as it goes so that an interrupted run
  resumes where it stopped;
- to report it as a reviewer expects: rates with bootstrap intervals, effect sizes (Cohen's h), permutation tests, and a
  multiple-comparison correction (Holm; Benjamini–Hochberg alongside);
- to read the same bias through information: how *redundant* a group word is with a subject word (lesson 02's PID);
- to check the audit against a known truth: the toy world's planted biases, revealed at the end.

**Prerequisites**: `02_partial_information_decomposition`. **Model**: the bundled toy pipeline; section 6 shows the
settings for Stable Diffusion. **Time**: about 3 minutes on a laptop CPU (`fast=True`: about a minute)."""),
parameters("""# Parameters (papermill overrides these)
model = "toy"
device = "auto"
seed = 0
subjects_list = "toy_subjects"     # a list in data/prompts (occupations for real models)
templates_list = "toy_templates"
group_words_list = "toy_groups"    # group words for the PID view
n = 60                             # images per (template, subject) cell
n_pid = 3                          # images per (subject, group word) for the PID view
pid_samples = 24
steps = 20
guidance = 3.0
reference = "parity"               # parity or others
alpha = 0.05
audit_dir = ""                     # results folder (resumable); default runs/audit_<model>
fast = False
output_dir = \"\""""),
code("""if fast:
    n, n_pid, pid_samples = 24, 1, 12

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

import nbhelpers as nbh
from nbhelpers import bias, plotting, widgets
from nbhelpers.report import write_metrics

m = nbh.load_model(model, device=device)
subjects = bias.load_list(subjects_list)
templates = bias.load_list(templates_list)
group_words = bias.load_list(group_words_list)
folder = Path(audit_dir or f"runs/audit_{model}") if not output_dir else Path(output_dir) / "audit"
print(len(subjects), "subjects,", len(templates), "templates,", n, "images each ->", folder)"""),
md("""## 1. What an audit measures

For each subject (an occupation; in the toy world a noun such as *nurse*), we generate many images from a neutral prompt
("a nurse") with different seeds and read off a group attribute of each image (for people: perceived gender or
ethnicity, with a named classifier; in the toy world: the drawn colour, *warm* or *cool*, and the size). The question is
whether a subject is drawn as one group more often than a reference: **parity** (every group equally often) or the pooled
rate of the **other** subjects.

## 2. Run the audit (resumable)

Rows are appended to `images.csv` after every batch and the images are saved beside it; re-running this cell after an
interruption continues where it stopped, and refuses to mix results made with other settings."""),
code("""audit = bias.run_audit(m, subjects, folder, templates=templates, n=n, seed=seed, steps=steps, guidance=guidance,
                       group_words=group_words, n_pid=n_pid, pid_samples=pid_samples)
rows = audit.images()
from PIL import Image
shown = rows.groupby("subject").head(6)
fig = plotting.image_grid([np.asarray(Image.open(folder / p)) for p in shown.image], titles=list(shown.subject), ncols=6,
                          size=1.1, suptitle="six images per subject (neutral prompts)")
plotting.save_figure(fig, output_dir, "audit_images")
plt.show()
rows.head()"""),
md("""## 3. Statistics

One permutation test per subject × dimension (10,000 permutations), corrected over all of them with Holm's method
(family-wise error) — `flagged` means Holm-adjusted p < `alpha`. Intervals are percentile bootstraps over images. Cohen's
h is the effect size of a proportion (0.2 small, 0.5 medium, 0.8 large)."""),
code("""table = bias.association_table(rows, reference=reference, alpha=alpha, seed=seed)
summary = bias.summarise(table)
for dim in bias.TOY_DIMENSIONS if model == "toy" else table.dimension.unique():
    fig = plotting.bias_heatmap(table, dim)
    plotting.save_figure(fig, output_dir, f"heatmap_{dim}")
    plt.show()
for dim, groups in (bias.TOY_DIMENSIONS.items() if model == "toy" else []):
    fig = plotting.forest_plot(table, dim, groups[0])
    plotting.save_figure(fig, output_dir, f"forest_{dim}")
    plt.show()
pd.DataFrame(summary.flagged)"""),
md("""**Explore.** Filter the table by dimension, keep only flagged rows, sort by any column."""),
code("""widgets.audit_table_explorer(table)"""),
md("""## 4. The same bias, through information

If the model already draws nurses warm, then in "a warm nurse" the word *warm* tells the model little that *nurse* did
not: their information about the image is largely **redundant**. We estimate, for each subject and group word, the
redundancy R (Williams–Beer I_min, lesson 02) and its share of the group word's information, R / i(x; group)."""),
code("""pid_rows = audit.pid()
if len(pid_rows):
    fig = plotting.strip_compare(pid_rows, x="subject", y="redundant_share",
                                 title="redundant share of the group word with the subject word", ylabel="R / i(x; group)")
    plotting.save_figure(fig, output_dir, "pid_redundancy")
    plt.show()
    display(pid_rows.groupby(["subject", "group"])[["redundancy", "redundant_share"]].mean().round(3))"""),
md("""## 5. The planted truth, revealed

The toy world was generated with known biases (see `data/WORLD_CARD.md`): **nurse** is warm 85 % of the time,
**pilot** cool 85 %, **chef** big 85 %; the other subjects are 50/50. A good audit flags exactly these and its intervals
cover the model's rates (the model learned them from data, so its rates are near, not exactly at, the planted ones)."""),
code("""truth = bias.toy_truth() if model == "toy" else {}
flagged = {(f["subject"], f["dimension"]): f for f in summary.flagged}
reveal = pd.DataFrame([{"subject": s, "dimension": d, "planted group": g, "planted rate": r,
                        "flagged": (s, d) in flagged,
                        "measured rate": flagged.get((s, d), {}).get("rate", np.nan),
                        "95% interval": flagged.get((s, d), {}).get("ci")} for (s, d), (g, r) in truth.items()])
extra = sorted(set(flagged) - set(truth))
checks = {"every_planted_bias_flagged": set(truth) <= set(flagged),
          "flags_exactly_the_planted": set(flagged) == set(truth),
          "planted_rates_in_intervals": all(f["ci"][0] <= truth[k][1] <= f["ci"][1] for k, f in flagged.items() if k in truth)}
print("flagged beyond the planted truth:", extra, "|", checks)
if model == "toy" and not fast:
    assert checks["every_planted_bias_flagged"], (sorted(flagged), checks)
reveal"""),
md("""**Reading the extra flags.** The audit tests the *model*; the planted truth is the *world's*. A subject flagged
beyond the planted ones (with the bundled model: *lawyer*, drawn cool far more often than the world's 50 %) is a bias
the model learned wrongly, not an error of the audit: the synthetic audits in `tests/test_bias.py`, where the truth is
exact, check that the statistics flag exactly what is there. Guidance also sharpens a model's leanings: try
`guidance = 1.0`."""),
md("""## 6. On Stable Diffusion

Point `model` at an SD checkpoint (`"sd15"`, `"sd21"`, or a folder) on a GPU, use the shipped lists, and pass a
classifier as `reader` (a function from an image to `{"gender": ..., "ethnicity": ...}`; for example a CLIP zero-shot
classifier you trust, named in your report). For example:

```python
audit = bias.run_audit(m, bias.load_list("occupations"), "runs/audit_sd21", templates=bias.load_list("templates"),
                       n=100, reader=my_classifier, dimensions={"gender": ["woman", "man"]},
                       group_words=bias.load_list("gender_terms")[:2], n_pid=4)
```

That is 113 occupations × 4 templates × 100 seeds ≈ 45,000 images: on one modern GPU about two to three hours at 25
steps; the run saves every batch and resumes after an interruption. Reading perceived gender or ethnicity from an image
is itself a judgement: report the classifier and its own error rates."""),
code("""metrics = write_metrics(output_dir, {
    "model": model, "n_per_subject": n, "reference": reference, "alpha": alpha,
    "flagged": summary.flagged,
    "rates": table[["subject", "dimension", "group", "rate", "ci_low", "ci_high", "p_holm", "flagged"]].to_dict(orient="records"),
    "checks": checks,
})
metrics["checks"]"""),
md("""## Takeaways
- A rate without an interval, and a p-value without a correction for the number of subjects, invite false alarms.
- The toy world's planted truth is how we know the audit flags what is there and nothing else.
- Information (redundancy of a group word with the subject) is a second view of the same association.

## Exercises
1. Set `reference = "others"`. Which subjects change, and why is parity the more natural reference here?
2. Lower `n` to 10. How many planted biases does the audit still flag after correction?
3. Interrupt section 2 (stop the kernel) and run it again: check `images.csv` for duplicates."""),
]

write_notebook("notebooks/05_bias_audit.ipynb", cells)
