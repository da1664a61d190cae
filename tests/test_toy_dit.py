"""The second world model, `toy-dit` (SD3 layout: MMDiT, rectified flow), trained on the same world: files,
offline loading, the same quality bars as the UNet world (held-out captions: colour and position >= 95 %,
shape >= 85 %, both objects of two-object captions fully right >= 75 %; planted rates within ±10 points),
and ConceptAttention's localisation against the world's exact masks."""
import json
from pathlib import Path

import numpy as np
import pytest

from nbhelpers.model import TOY_DIT_MODEL_DIR, TOY_MODEL_DIR
from nbhelpers.toyworld.checker import read_image
from nbhelpers.toyworld.evaluate import enough_images, evaluate_quality, planted_rates, rate_lines, unconditional_mix


@pytest.fixture(scope="module")
def quality(toy_dit_model):
    q = evaluate_quality(toy_dit_model, n_single=120, n_pair=120)
    print("held-out quality:", json.dumps(q.to_dict(), indent=1))
    return q


@pytest.fixture(scope="module")
def rates(toy_dit_model):
    rows = planted_rates(toy_dit_model, n=200, first=100)  # two stages: 100 more images where the first 100 leave it open
    print(rate_lines(rows))
    return rows


def test_files_are_small_safetensors_of_the_sd3_layout(toy_dit_model):
    files = [p for p in Path(TOY_DIT_MODEL_DIR).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pkl", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    pipe = toy_dit_model.pipe
    assert type(pipe).__name__ == "StableDiffusion3Pipeline" and toy_dit_model.family.name == "sd3"
    assert type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert toy_dit_model.latent_shape == (4, 16, 16) and toy_dit_model.image_size == 32
    assert toy_dit_model.family.max_sequence_length == pipe.tokenizer_3.model_max_length == 24
    # the UNet world's VAE, so both models (and the exact world denoiser) share one latent space
    from safetensors.torch import load_file

    a = load_file(Path(TOY_MODEL_DIR) / "vae" / "diffusion_pytorch_model.safetensors")
    b = load_file(Path(TOY_DIT_MODEL_DIR) / "vae" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert pipe.vae.config.scaling_factor == pytest.approx(0.5563969016075134) and pipe.vae.config.shift_factor == 0.0
    log = json.loads((Path(TOY_DIT_MODEL_DIR) / "training_log.json").read_text())
    assert log["arch"] == "dit" and log["denoiser_steps"] > 0


def test_held_out_quality_meets_the_issue_bar(quality):
    assert quality.n_captions >= 200 and quality.n_pairs >= 100
    assert quality.accuracy["colour"] >= 0.95, quality.accuracy
    assert quality.accuracy["position"] >= 0.95, quality.accuracy
    assert quality.accuracy["shape"] >= 0.85, quality.accuracy
    assert quality.pair_fully_correct >= 0.75, quality.pair_fully_correct


def test_planted_phenomena_show_at_their_rates(rates):
    """Every planted rate within ±10 points, the chef's size bias included. Measured on the shipped toy-dit (guidance
    1, 100 or 200 images): chef big 83.5 % (planted 85 %). Until its fifth and sixth training cycles toy-dit drew the
    bare "a chef" big 71 %: the caption that leaves both size and position open is rare in the world's captions (about
    6 % of a chef's), and its size is decided around log-SNR −5 to −3 (the model card's finding). Those two cycles spend
    their extra draws on such captions at log-SNR −6 to −2 (``--extend-open-size``, ``--extend-extra-logsnr``); the
    pictures of every caption, hence the optimum, stay the world's."""
    off = [r for r in rates if abs(r["measured"] - r["planted"]) > 0.10]
    assert not off, off
    assert all(enough_images(r) for r in rates), rates


def test_the_chef_is_drawn_big_at_the_planted_rate_once_its_position_is_named(toy_dit_model):
    """Named with a position ("a chef in the middle") the chef is drawn big at the world's rate too (85 %; measured
    90 % on these 200 seeds; 84.5 % before the fifth cycle, when the bare "a chef" was drawn big 71 %). At high noise
    both world models predict a caption that leaves the position open part of the way back to the unconditional mean,
    and one that names it within 5 % (the model card's finding; ``tests/test_diagnostics.py``): the open layout is
    where the size prior was lost, so this check guards the positioned caption while the last two cycles train the
    open one."""
    from nbhelpers.metrics import wilson_interval
    from nbhelpers.toyworld.evaluate import _generate

    images = _generate(toy_dit_model, ["a chef in the middle"] * 200, list(range(5000, 5200)), 25, 1.0, 100)
    sizes = [r[0].size for r in (read_image(im, max_objects=1) for im in images) if r]
    k = sum(s == "big" for s in sizes)
    print(f"a chef in the middle: big {k}/{len(sizes)}, 95 % CI {wilson_interval(k, len(sizes))}")
    assert len(sizes) >= 190 and abs(k / len(sizes) - 0.85) <= 0.10


def test_the_unconditional_denoiser_draws_the_worlds_mix_of_kinds(toy_dit_model):
    """The empty caption's pictures are the world's (the unconditional denoiser every mutual information and every
    guided sample subtracts): two-object pictures, and red or blue among one-object pictures, within 10 points of the
    world's shares (the exact denoiser, same sampler and checker: pairs 33 % for the world's 35 %). Measured: pairs
    28.75 %, red or blue 51 % (51 %). Before the fourth training cycle, whose kind re-weighting keeps every caption's
    pictures (``reweighting``), toy-dit drew pairs 19.5 % of the time and red or blue 60 % of lone objects."""
    mix = unconditional_mix(toy_dit_model, n=400)
    print(mix)
    assert abs(mix["pairs"] - mix["world"]["pairs"]) <= 0.10, mix
    assert abs(mix["red_or_blue_of_lone"] - mix["world"]["red_or_blue_of_lone"]) <= 0.10, mix


def test_concept_attention_localises_words_against_exact_masks(toy_dit_model):
    """ConceptAttention (each image's words as the concepts, with its caption as the prompt; the maps lesson 01's
    localisation study scores on an MMDiT) on the world's own two-object pictures: its AUROC against the exact
    object masks is above 0.5, the lower end of its 95 % interval over images (a random map scores 0.5, checked
    on the same masks). Measured: about 0.6 — far below the information maps (cmi about 0.9 on the UNet world):
    on this small DiT the text stream's attention outputs separate the two objects only weakly."""
    from nbhelpers.concept_attention import concept_attention_maps
    from nbhelpers.metrics import auroc, bootstrap_ci, upsample
    from nbhelpers.toyworld import scenes as world_scenes

    scenes, images, masks = world_scenes.world_pairs(24, seed=3)
    per_image = []
    for image, case in zip(images, world_scenes.localisation_cases(scenes, masks)):
        words = list(dict.fromkeys(t.word for t in case.targets))
        maps = concept_attention_maps(toy_dit_model, image, words, prompt=case.prompt, n=8, seed=0)
        per_image.append([auroc(upsample(maps[t.word], t.mask.shape[0]), t.mask) for t in case.targets])
    flat = np.concatenate(per_image)
    lo, hi = bootstrap_ci(lambda idx: np.mean(np.concatenate([per_image[i] for i in idx])), len(per_image))
    print(f"ConceptAttention AUROC {flat.mean():.3f} (95 % CI {lo:.3f}-{hi:.3f}, {len(flat)} words)")
    assert lo > 0.5, (flat.mean(), lo, hi)
    rng = np.random.default_rng(0)
    random_auc = [auroc(rng.random(t.mask.shape), t.mask) for case in world_scenes.localisation_cases(scenes, masks)
                  for t in case.targets]
    assert abs(np.mean(random_auc) - 0.5) < 0.05
