"""Timestep visualisation: per-step attention capture, relevance, stage analysis, emergence; saliency and
faithfulness (nbhelpers.saliency)."""
import numpy as np
import pytest
import torch

from nbhelpers import attention, saliency, timesteps
from nbhelpers.attention import AttentionBudgetError, AttentionStore, capture_cross_attention
from nbhelpers.metrics import ssim

PROMPT = "a big red circle on the left"


# -- schedules and the image metric ------------------------------------------------------------------------
def test_step_schedules_crowd_the_start_or_the_end():
    early = timesteps.step_schedule(20, 6, "early")
    late = timesteps.step_schedule(20, 6, "late")
    uniform = timesteps.step_schedule(20, 6)
    for s in (early, late, uniform):
        assert len(set(s)) == 6 and s == sorted(s) and 0 <= s[0] and s[-1] <= 19
    assert early[0] == 0 and late[-1] == 19 and uniform[0] == 0 and uniform[-1] == 19
    gaps = np.diff(early)
    assert (np.diff(gaps) >= 0).all() and gaps[-1] > gaps[0]  # exponentially spaced: gaps grow
    assert late == sorted(19 - i for i in early)
    assert np.mean(early) < np.mean(uniform) < np.mean(late)
    with pytest.raises(ValueError, match="focus"):
        timesteps.step_schedule(20, 6, "middle")
    with pytest.raises(ValueError, match="between 1 and"):
        timesteps.step_schedule(5, 6)


def test_ssim_known_cases():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3)).astype(np.uint8)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    noisier = np.clip(a + rng.normal(0, 60, a.shape), 0, 255)
    assert 1 > ssim(a, noisy) > ssim(a, noisier)
    assert ssim(a, noisy) == pytest.approx(ssim(noisy, a))
    assert ssim(a, 255 - a) < 0  # anti-correlated structure
    with pytest.raises(ValueError, match="one shape"):
        ssim(a, a[:16])


# -- per-step attention capture (tiny SD-layout pipeline) ---------------------------------------------------
def test_trace_keeps_the_conditional_branch_step_by_step(tiny_model):
    """The per-step maps recorded during a guided generation equal the maps of a separate,
    conditional-only UNet call on that step's latent: right rows, right step."""
    m = tiny_model
    tr = timesteps.trace(m, "a red circle", seed=1, steps=4, guidance=4.0)
    assert tr.word_maps.shape == (4, len(tr.words), *m.latent_shape[-2:])
    tp = m.tokenize("a red circle")
    for k in (0, 3):
        store = AttentionStore(m.latent_shape[-2:])
        with capture_cross_attention(m.pipe.unet, store):
            m.eps(tr.latent(k), float(tr.logsnrs[k]), m.condition("a red circle"))
        direct = store.token_maps()[0, tp.token_indices("red")].mean(0).numpy()
        np.testing.assert_allclose(tr.word_map("red", k), direct, rtol=1e-4, atol=1e-6)
    # the maps are attention probabilities: over all tokens they sum to 1 at every latent pixel
    full = AttentionStore(m.latent_shape[-2:])
    with capture_cross_attention(m.pipe.unet, full):
        m.eps(tr.latent(1), float(tr.logsnrs[1]), m.condition("a red circle"))
    np.testing.assert_allclose(full.token_maps()[0].sum(0).numpy(), 1.0, rtol=1e-4)
    assert tr.images("pred_x0").shape == (4, m.image_size, m.image_size, 3)
    assert type(m.pipe.unet.attn_processors[next(iter(m.pipe.unet.attn_processors))]).__name__ != "_CaptureProcessor"


def test_store_keeps_layers_heads_and_respects_its_budget(tiny_model):
    m = tiny_model
    z = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = m.condition(["a red circle", "a blue square"])
    store = AttentionStore(m.latent_shape[-2:], keep_steps="all", keep_layers=True, keep_heads=True)
    with capture_cross_attention(m.pipe.unet, store, count_calls=True):
        m.eps(z, 0.0, cond)
        m.eps(z, 1.0, cond)
    assert sorted(store.step_maps()) == [0, 1]
    layers = store.layer_maps()
    heads = store.head_maps()
    assert set(layers) == set(heads) == store.layers and len(layers) >= 2
    name = next(iter(heads))
    np.testing.assert_allclose(heads[name].mean(1), layers[name], rtol=1e-5, atol=1e-7)  # heads average to the layer
    mean_of_steps = torch.stack(list(store.step_maps().values())).mean(0)
    np.testing.assert_allclose(mean_of_steps, store.token_maps(), rtol=1e-5, atol=1e-7)
    tight = AttentionStore(m.latent_shape[-2:], keep_steps="all", keep_heads=True, budget_mb=0.001)
    with pytest.raises(AttentionBudgetError, match="keep fewer steps"):
        with capture_cross_attention(m.pipe.unet, tight, count_calls=True):
            m.eps(z, 0.0, cond)
    assert not any(type(p).__name__ == "_CaptureProcessor" for p in m.pipe.unet.attn_processors.values())
    with pytest.raises(ValueError, match="no cross-attention layer"):
        with capture_cross_attention(m.pipe.unet, store, layers="nonexistent"):
            pass


def test_gradient_capture_restores_processors_and_matches_the_forward(tiny_model):
    m = tiny_model
    z = torch.randn(1, *m.latent_shape, generator=torch.Generator().manual_seed(2))
    cond = m.condition("a red circle")
    before = m.eps(z, 0.5, cond)
    with attention.attention_probs_with_grad(m.pipe.unet) as rec:
        during = m.eps(z, 0.5, cond, grad=True)
    assert during.requires_grad and all(len(v) == 1 for v in rec.values())
    torch.testing.assert_close(during.detach(), before, rtol=1e-4, atol=1e-5)  # same function, other kernel
    after = m.eps(z, 0.5, cond)
    torch.testing.assert_close(after, before)
    assert not any("get_attention_scores" in vars(mod) for mod in m.pipe.unet.modules())


def test_relevance_influence_is_the_noise_estimate_change(tiny_model):
    m = tiny_model
    tr = timesteps.trace(m, "a red circle", seed=0, steps=3, guidance=3.0)
    rel = timesteps.word_relevance(m, tr)
    assert rel.attention.shape == rel.influence.shape == (3, len(tr.words))
    assert (rel.attention >= 0).all() and rel.attention.sum() > 0
    np.testing.assert_allclose(rel.shares().sum(1), 1.0)
    k, w = 1, tr.words.index("red")
    a = float(tr.logsnrs[k])
    e_full = m.eps(tr.latent(k), a, m.condition("a red circle"))
    e_without = m.eps(tr.latent(k), a, m.condition(m.remove_word("a red circle", "red")))
    assert rel.influence[k, w] == pytest.approx(float((e_full - e_without).pow(2).mean()), rel=1e-4)


def test_saliency_and_faithfulness_invariants(tiny_model):
    m = tiny_model
    tr = timesteps.trace(m, "a red circle", seed=0, steps=4, guidance=3.0)
    sal = saliency.rise_saliency(m, tr, 2, n_masks=32, seed=0)
    assert sal.map.shape == m.latent_shape[-2:] and np.isfinite(sal.map).all()
    again = saliency.rise_saliency(m, tr, 2, n_masks=32, seed=0)
    np.testing.assert_array_equal(sal.map, again.map)  # seeded
    cam = saliency.gradcam_saliency(m, tr, 2)
    assert cam.map.shape == m.latent_shape[-2:] and (cam.map >= 0).all()
    f = saliency.faithfulness(m, tr, sal, n_points=5, n_random=2)
    # nothing deleted / everything inserted: the unperturbed prediction itself
    assert f.deletion[0] == pytest.approx(1.0) and f.insertion[-1] == pytest.approx(1.0)
    assert f.random_deletion[:, 0] == pytest.approx(1.0)
    assert 0 < f.deletion_auc <= 1 and 0 < f.insertion_auc <= 1
    with pytest.raises(ValueError, match="outside"):
        saliency.rise_saliency(m, tr, 9)
    with pytest.raises(ValueError, match="unknown denoiser block"):
        saliency.gradcam_saliency(m, tr, 1, block="up_blocks.99")
    both = saliency.gradcam_saliency(m, tr, 2, block=["mid_block", "up_blocks.1"])
    assert both.map.shape == cam.map.shape and both.map.max() <= 1 + 1e-6
    classic = saliency.gradcam_saliency(m, tr, 2, weighting="gradcam")
    assert classic.params["weighting"] == "gradcam" and (classic.map >= 0).all()
    assert not np.allclose(classic.map, cam.map)
    with pytest.raises(ValueError, match="weighting"):
        saliency.gradcam_saliency(m, tr, 2, weighting="cam++")
    with pytest.raises(nbh_word_error()):
        timesteps.trace(m, "a red circle", words=["purple"], steps=2)


def test_similarity_ignores_a_flat_offset_and_sees_structure():
    """The saliency score is Pearson's correlation: a constant per-channel offset (a flat background's
    colour) changes nothing, a spatial pattern does, and it reads 1 for the reference itself."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 4, 8, 8, generator=g)
    shifted = ref + torch.tensor([3.0, -2.0, 5.0, 1.0]).view(1, 4, 1, 1)
    other = torch.randn(1, 4, 8, 8, generator=g)
    s = saliency._similarity_rows(torch.cat([ref, shifted, other, -ref]), ref)
    np.testing.assert_allclose(s[:2].numpy(), [1.0, 1.0], atol=1e-5)
    assert abs(float(s[2])) < 0.4 and float(s[3]) == pytest.approx(-1.0, abs=1e-5)
    # the raw cosine, by contrast, is moved by the offset
    raw = torch.nn.functional.cosine_similarity(shifted.flatten(1), ref.flatten(1))
    assert float(raw) < 0.9


def _relevance(influence, words=("a", "red", "circle"), steps=(0, 2, 5)):
    influence = np.asarray(influence, float)
    return timesteps.StepRelevance(list(words), list(steps), np.zeros(len(steps)), influence.copy(),
                                   np.zeros((*influence.shape, 2, 2)), influence)


def test_shares_and_dominant_on_a_subset_of_words():
    rel = _relevance([[1, 1, 2], [2, 6, 2], [0, 3, 1]])
    np.testing.assert_allclose(rel.shares("influence"), [[.25, .25, .5], [.2, .6, .2], [0, .75, .25]])
    # among the content words only: renormalised so that they share the step
    np.testing.assert_allclose(rel.shares("influence", ["red", "circle"]), [[1 / 3, 2 / 3], [.75, .25], [.75, .25]])
    np.testing.assert_allclose(rel.shares("influence", ["red", "circle"]).sum(1), 1.0)
    assert rel.dominant("influence") == ["circle", "red", "red"]
    assert rel.dominant("influence", ["a", "circle"]) == ["circle", "a", "circle"]
    assert rel.rows([5, 0]) == [2, 0]
    with pytest.raises(ValueError, match="not analysed"):
        rel.rows([1])
    with pytest.raises(nbh_word_error()):
        rel.shares("influence", ["blue"])


def test_stage_shares_average_the_shares_over_each_stage():
    rel = _relevance([[1, 1, 2], [2, 6, 2], [0, 3, 1]])
    out = timesteps.stage_shares(rel, {"early": [0, 2], "late": [5]}, ["red", "circle"])
    assert out == {"early": {"red": pytest.approx(0.425), "circle": pytest.approx(0.35)},
                   "late": {"red": pytest.approx(0.75), "circle": pytest.approx(0.25)}}
    everyone = timesteps.stage_shares(rel, {"all": [0, 2, 5]})
    assert sum(everyone["all"].values()) == pytest.approx(1.0)  # all words: a stage's shares sum to 1
    assert list(everyone["all"]) == ["a", "red", "circle"]


def test_prediction_change_known_answers():
    imgs = np.zeros((4, 2, 2, 3), np.uint8)
    imgs[1] = 10
    imgs[2] = 10
    imgs[3, 0] = 255  # last step: one row jumps from 10 to 255, the other drops from 10 to 0
    assert timesteps.prediction_change(imgs, [0]) == pytest.approx(10.0)  # uint8: no wrap-around
    assert timesteps.prediction_change(imgs, [1]) == pytest.approx(0.0)
    assert timesteps.prediction_change(imgs, [2]) == pytest.approx((245 + 10) / 2)
    assert timesteps.prediction_change(imgs, [0, 1, 3]) == pytest.approx(5.0)  # the last step has no successor
    with pytest.raises(ValueError, match="no next step|has a next step"):
        timesteps.prediction_change(imgs, [3])


def nbh_word_error():
    from nbhelpers import WordNotInPromptError

    return WordNotInPromptError


def test_emergence_settling_is_computed_from_the_readings(tiny_model, monkeypatch):
    """A scripted reader: colour right from step 0, shape only from the last step, position flips
    once: the settled steps must be 0, S-1 and the step after the last flip."""
    m = tiny_model
    S = 5
    calls = {"n": 0}

    def reader(image):
        k = calls["n"] % (S + 1)  # S steps, then the final image
        calls["n"] += 1
        return {"colour": "red", "shape": "circle" if k >= S - 1 else "square",
                "position": "left" if k != 2 else "right"}

    em = timesteps.concept_emergence(m, ["a red circle"], seeds=[0], steps=S, reader=reader,
                                     attributes=("colour", "shape", "position"))
    assert em.mean_settled() == {"colour": 0.0, "shape": float(S - 1), "position": 3.0}
    np.testing.assert_allclose(em.curves["shape"], [0, 0, 0, 0, 1])
    assert set(em.table().columns) >= {"prompt", "attribute", "settled_step", "settled_logsnr"}


def test_emergence_needs_a_reader(tiny_model):
    """The method knows no world: without a reader it says what to pass, before generating anything."""
    with pytest.raises(ValueError, match="reader=.*emergence_reader"):
        timesteps.concept_emergence(tiny_model, ["a red circle"], seeds=[0], steps=2)


def test_the_world_reader_reads_colour_by_direction():
    """The toy world's emergence reader: the largest object's attributes, None on an empty image, and a
    blob's colour read by its direction from the background, even when half the background is mixed in."""
    from nbhelpers.toyworld import concepts, world
    from nbhelpers.toyworld.checker import read_image

    img = world.lone_scene("yellow", "square", "big", "left").render()
    r = concepts.emergence_reader(img)
    assert r == {"colour": "yellow", "shape": "square", "size": "big", "position": "left"}
    assert concepts.emergence_reader(np.full((32, 32, 3), world.BACKGROUND, np.uint8)) is None
    bg = np.asarray(world.BACKGROUND, float)
    faded = np.where((img != world.BACKGROUND).any(-1, keepdims=True), (img + bg) / 2, img).round().astype(np.uint8)
    assert concepts.emergence_reader(faded)["colour"] == "yellow"
    assert read_image(faded, max_objects=1)[0].colour != "yellow"  # the plain checker's nearest colour errs


# -- on the bundled toy model: the checks -----------------------------------------------------------
@pytest.fixture(scope="module")
def emergence(toy_model):
    from nbhelpers.toyworld import concepts, world

    scenes = [world.with_plain_red(s) for s in world.sample_scenes(100, seed=11, split="all", kind="single")]
    return timesteps.concept_emergence(toy_model, [s.caption() for s in scenes], seeds=list(range(100)), steps=20,
                                       guidance=1.0, reader=concepts.emergence_reader)


def test_position_and_size_settle_before_shape(emergence):
    """Measured on 100 prompts (the model's own, unguided predictions): the paired difference
    (shape's settling step − position's, − size's) has its 95 % bootstrap interval above zero."""
    print(emergence.mean_settled())
    for early in ("position", "size"):
        t = emergence.order_test(early, "shape")
        print(early, t)
        assert t["ci"][0] > 0, (early, t)


def test_colour_settles_before_shape(emergence):
    """Measured on 100 prompts, unguided (shipped model: colour settles at step 0.0 on average, shape at
    0.29, difference 95 % CI (0.07, 0.59)). Most images are tied at step 0: the model decides a lone
    object's colour, size and position in the first step, its shape sometimes later."""
    t = emergence.order_test("colour", "shape")
    print(t)
    assert t["ci"][0] > 0, t


@pytest.fixture(scope="module")
def overlap(toy_model):
    from nbhelpers.toyworld.overlap import world_overlap_study

    return world_overlap_study(toy_model, n_images=10, seed=3, steps=20, n_masks=96, n_random=3)


def test_attention_falls_on_the_object(overlap):
    s = overlap.summary()
    print({k: (round(v["mean"], 3), tuple(round(c, 3) for c in v["ci"])) for k, v in s.items()})
    floor = s["auroc_random_map"]["ci"][1]
    for key in ("auroc_attention_colour", "auroc_attention_noun"):
        assert s[key]["ci"][0] > floor, (key, s[key], floor)


def test_saliency_falls_on_the_object(overlap):
    """DF-RISE and DF-CAM at step 15 of 20 rank the object's pixels above a random map (bootstrap CIs
    over 10 images). With the raw cosine as the score and classic Grad-CAM this failed (DF-RISE AUROC
    0.44, DF-CAM 0.62 with CI 0.42-0.78): see the module docstring of nbhelpers.timesteps."""
    s = overlap.summary()
    print({k: (round(v["mean"], 3), tuple(round(c, 3) for c in v["ci"])) for k, v in s.items() if "auroc" in k})
    floor = s["auroc_random_map"]["ci"][1]
    for key in ("auroc_rise", "auroc_cam"):
        assert s[key]["ci"][0] > floor, (key, s[key], floor)


def test_saliency_beats_random_order_on_deletion(overlap):
    df = overlap.table().dropna(subset=["deletion_auc_rise"])
    diff = (df.deletion_auc_random_rise - df.deletion_auc_rise).to_numpy()
    print(df[["deletion_auc_rise", "deletion_auc_random_rise", "deletion_auc_cam", "deletion_auc_random_cam"]])
    assert diff.mean() > 0 and (diff > 0).mean() >= 0.7
