"""The toy world's exact denoiser ("toy-oracle"): its support, its caption posterior (checked against the
training's caption process by brute force and by hand), its eps (the discrete posterior mean), and the
information estimators through the real prompt interface against the exact answers."""
import inspect
import itertools
import math
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from nbhelpers import PromptError, load_model
from nbhelpers.closed_form import DiscreteDenoiser
from nbhelpers.immse import LogSNRSampler
from nbhelpers.info import conditional_mutual_information, mutual_information, prompt_information
from nbhelpers.model import Denoiser
from nbhelpers.toyworld import oracle as orc
from nbhelpers.toyworld import train, world

CAPTION = "a big red circle on the left"
# Where the oracle's information lies: every term below is carried between log-SNR -16 and -1 (the
# support's latents are far apart: above α ≈ -1 every posterior has settled on the true picture).
FOCUSED = LogSNRSampler(-4.0, 1.0, 12.0)  # [-16, 8]


@pytest.fixture(scope="module")
def oracle(toy_model):
    return orc.WorldDenoiser(toy_model)


@pytest.fixture(scope="module")
def red_circle(oracle):
    j = oracle.index_of(world.lone_scene("red", "circle", "big", "left"))
    return j, oracle.image(j)


# --- the support --------------------------------------------------------------------------------
def test_support_is_the_discretised_world(oracle, toy_model):
    comps = oracle.compositions
    assert len(comps) == 150 + 3600 + 120 + 20
    assert sum(c.prior for c in comps) == pytest.approx(1.0, abs=1e-12)
    kinds = {k: sum(c.prior for c in comps if c.kind == k) for k in world.KIND_RATES}
    assert kinds == pytest.approx(world.KIND_RATES)
    # pictures, not scenes: subjects and bats are drawn like singles, "A left of B" like "B right of A"
    assert oracle.n_support == 150 * 9 + 3600 // 2 == 3150
    assert oracle._support.shape == (3150, 4, 16, 16) and oracle._support.dtype == torch.float32
    a, b = ("red", "circle", "big"), ("blue", "square", "small")
    left = world.Scene("pair", orc._pair_objects("left of", (a, b)), "left of")
    right = world.Scene("pair", orc._pair_objects("right of", (b, a)), "right of")
    assert np.array_equal(left.render(), right.render()) and oracle.index_of(left) == oracle.index_of(right)
    nurse = world.lone_scene("red", "circle", "big", "top", colour_word="warm", noun="nurse")
    assert oracle.index_of(nurse) == oracle.index_of(world.lone_scene("red", "circle", "big", "top"))
    # each latent is the toy model's encoding of the picture's exact render
    for j in (0, 1500, 3149):
        got = toy_model.encode_image(oracle.image(j))
        assert torch.allclose(oracle.latents(j), got, atol=2e-4)  # batched convolutions round differently
    jittered = world.sample_scenes(1, seed=0, kind="single")[0]
    with pytest.raises(ValueError, match="jitter grid"):
        oracle.index_of(jittered)
    assert orc.jitter_offsets(3) == pytest.approx([-1.0, 0.0, 1.0])


def test_train_split_drops_the_held_out_compositions(toy_model):
    comps = orc.compositions("train")
    assert not any(world.is_held_out(c.scene) for c in comps)
    assert 0.8 < len(comps) / 3890 < 0.95 and sum(c.prior for c in comps) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="split"):
        orc.compositions("heldout")


# --- the caption process ------------------------------------------------------------------------
def _brute_force_captions(scene: world.Scene) -> dict[str, float]:
    """p(caption | composition) by running the training's caption process exhaustively with the
    world's own code: every red wording, every dropout pattern, the empty caption."""
    out: dict[str, float] = {"": orc.P_EMPTY}
    wordings = [list(world.RED_WORDING_RATES.items()) if o.colour == "red" and o.colour_word is None else
                [(o.colour_word, 1.0)] for o in scene.objects]
    groups = scene.optional_groups()
    for words in itertools.product(*wordings):
        objs = tuple(replace(o, colour_word=w) for o, (w, _) in zip(scene.objects, words))
        sc = replace(scene, objects=objs)
        p_words = math.prod(p for _, p in words)
        for pattern in itertools.product((False, True), repeat=len(groups)):
            drop = dict(zip(groups, pattern))
            p = p_words * (1 - orc.P_EMPTY)
            for g, d in drop.items():
                q = orc.P_NOUN if g.startswith("noun") else orc.P_WORD
                p *= q if d else 1 - q
            cap = sc.caption(drop)
            out[cap] = out.get(cap, 0.0) + p
    return out


def test_caption_process_constants_are_the_trainings():
    assert (orc.P_WORD, orc.P_NOUN, orc.P_EMPTY) == (0.25, 0.1, 0.1)
    rng = np.random.default_rng(0)
    drops = [world.random_drop(rng, world.lone_scene("red", "circle")) for _ in range(4000)]
    assert np.mean([d["noun0"] for d in drops]) == pytest.approx(orc.P_NOUN, abs=0.02)
    assert np.mean([d["size0"] for d in drops]) == pytest.approx(orc.P_WORD, abs=0.03)
    assert inspect.signature(train.denoising_loss).parameters["p_empty"].default == orc.P_EMPTY
    assert f"p_empty={orc.P_EMPTY}" in inspect.getsource(train.train_denoiser)  # what training passes


def test_caption_likelihood_is_the_training_process_exactly(oracle):
    comps = oracle.compositions
    rng = np.random.default_rng(1)
    picks = {k: [i for i, c in enumerate(comps) if c.kind == k] for k in world.KIND_RATES}
    chosen = [int(i) for k in picks for i in rng.choice(picks[k], 3, replace=False)]
    chosen.append(next(i for i in picks["pair"] if all(o.colour == "red" for o in comps[i].scene.objects)))
    for ci in chosen:
        table = _brute_force_captions(comps[ci].scene)
        assert sum(table.values()) == pytest.approx(1.0, abs=1e-12)
        for cap, p in table.items():
            assert oracle.caption_likelihood(cap)[ci] == pytest.approx(p, rel=1e-12, abs=1e-15), (comps[ci], cap)


def test_caption_posterior_by_hand(oracle):
    scenes = oracle.scenes
    post = oracle.posterior("a big circle on the left")
    red = np.array([s.objects[0].colour == "red" if len(s.objects) == 1 else False for s in scenes])
    assert post[red].sum() == pytest.approx(1 / 5)
    assert post.sum() == pytest.approx(1.0) and (post > 0).sum() == 5 * 9  # five colours × the jitter grid
    # "red" is written "red" 60 %, "crimson" 20 %, "crimson red" 20 %
    ci = next(i for i, c in enumerate(oracle.compositions) if c.kind == "single" and c.scene.objects[0].colour == "red"
              and c.scene.objects[0].shape == "circle" and c.scene.objects[0].size == "big"
              and c.scene.objects[0].position == "left")
    lik = {w: oracle.caption_likelihood(f"a big {w} circle on the left")[ci] for w in ("red", "crimson", "crimson red")}
    assert lik["red"] == pytest.approx(0.9 * 0.75 * (0.75 * 0.6) * 0.9 * 0.75)
    assert lik["red"] / lik["crimson"] == pytest.approx(3.0) and lik["crimson"] == pytest.approx(lik["crimson red"])
    # the homonym: a bat at the top is a triangle, at the bottom a square, "a bat" either half the time
    shape_pos = np.array([(s.objects[0].shape, s.objects[0].position) if len(s.objects) == 1 else None
                          for s in scenes], dtype=object)
    top = oracle.posterior("a bat at the top")
    assert top[[sp == ("triangle", "top") for sp in shape_pos]].sum() == pytest.approx(1.0)
    bat = oracle.posterior("a bat")
    assert bat[[sp == ("square", "bottom") for sp in shape_pos]].sum() == pytest.approx(0.5)
    # the planted bias: a nurse is warm (red) 85 % of the time
    nurse = oracle.posterior("a nurse")
    assert nurse[red].sum() == pytest.approx(0.85)
    # the empty prompt is the prior, which is the null condition
    assert torch.equal(oracle.condition(""), oracle.null_condition())
    assert torch.equal(oracle.condition(None), oracle.null_condition())
    assert np.exp(oracle.null_condition().numpy()).sum() == pytest.approx(1.0)


def test_impossible_prompts_raise_a_clear_error(oracle):
    for prompt in ("a big red circle on the", "a purple bat in the middle", "a warm circle", "red big circle",
                   "a dog"):
        with pytest.raises(PromptError, match="no scene of the toy world is ever captioned") as e:
            oracle.condition(prompt)
        assert repr(prompt) in str(e.value)
    # prompts are read as words: punctuation and the "replace" policy's neutral "_" carry nothing
    assert np.array_equal(oracle.posterior("a _ circle, on the left!"), oracle.posterior("a circle on the left"))


# --- the denoiser ---------------------------------------------------------------------------------
def test_eps_is_the_discrete_posterior_mean(oracle, red_circle):
    j, _ = red_circle
    g = torch.Generator().manual_seed(0)
    x = oracle.latents([j, j, 7, 2000])
    a = torch.tensor([-6.0, -2.0, 0.5, 4.0], dtype=torch.float64)
    z = torch.sigmoid(a).sqrt().float().view(-1, 1, 1, 1) * x + torch.sigmoid(-a).sqrt().float().view(-1, 1, 1, 1) * \
        torch.randn(x.shape, generator=g)
    cond = oracle.condition(["", CAPTION, "a big circle on the left", "a circle"])
    got = oracle.eps(z, a, cond)
    assert got.dtype == torch.float32 and got.shape == z.shape
    support = oracle._support.reshape(oracle.n_support, -1).double()
    assert torch.equal(got, DiscreteDenoiser(support).eps(z, a, cond))
    # the posterior mean written out in full, float64
    zf = z.reshape(4, -1).double()
    sa, sb2 = torch.sigmoid(a).sqrt(), torch.sigmoid(-a)
    for i in range(4):
        d2 = ((zf[i] - sa[i] * support) ** 2).sum(1)
        w = torch.softmax(cond[i] - d2 / (2 * sb2[i]), 0)
        eps = (zf[i] - sa[i] * (w @ support)) / sb2[i].sqrt()
        assert torch.allclose(got[i].reshape(-1).double(), eps, atol=1e-5, rtol=1e-5)
    # one condition for the whole batch, and None = the prior
    assert torch.equal(oracle.eps(z, a, None), oracle.eps(z, a, oracle.null_condition().expand(4, -1)))
    assert torch.allclose(oracle.eps(z[1:2], -2.0, cond[1:2]), got[1:2], atol=1e-5)


def test_load_model_gives_the_oracle():
    t0 = time.time()
    o = load_model("toy-oracle", device="cpu")
    assert isinstance(o, orc.WorldDenoiser) and isinstance(o, Denoiser)
    assert time.time() - t0 < 60  # seconds once the support's latents are cached (first build: encodes 3150 pictures)
    assert o.name == "toy-oracle" and o.latent_shape == (4, 16, 16) and o.device == torch.device("cpu")
    toy = o._toy
    assert o.model_logsnr_range == toy.logsnr_range and o.logsnr_range == (-16.0, 8.0)
    assert o.remove_word(CAPTION, "red") == "a big circle on the left"
    assert o.tokenize("a crimson circle").token_indices("crimson") == [2, 3]
    img = o.image(5)
    assert o.decode(o.encode_image(img)).shape == (1, 32, 32, 3)


# --- exact answers ------------------------------------------------------------------------------------
def test_exact_information_values(oracle, red_circle):
    j, _ = red_circle
    ex = oracle.exact_information
    ln = math.log
    assert ex(j, CAPTION, "a big circle on the left") == pytest.approx(ln(5))  # colour: one of five
    assert ex(j, "a big crimson circle on the left", "a big circle on the left") == pytest.approx(ln(5))
    assert ex(j, "a big crimson red circle on the left", "a big red circle on the left") == pytest.approx(0, abs=1e-12)
    assert ex(j, CAPTION, "a red circle on the left") == pytest.approx(ln(2))  # size
    assert ex(j, CAPTION, "a big red on the left") == pytest.approx(ln(3))  # noun
    assert ex(j, CAPTION, "a big red circle") == pytest.approx(ln(5))  # position phrase
    # i(x; caption): p(x | caption) = 1/9 (the jitter cell); p(x) also counts warm nurses and chefs drawn alike
    px = (0.45 / 150 + 0.12 / 6 * 0.85 * 0.5 / 5 * 2) / 9
    assert ex(j, CAPTION) == pytest.approx(ln((1 / 9) / px)) == pytest.approx(ln(156.25))
    # the homonym: "bat" given "a big red ... at the top" picks the triangle among singles (3 shapes) and bats
    tri = oracle.index_of(world.lone_scene("red", "triangle", "big", "top"))
    assert ex(tri, "a big red bat at the top", "a big red at the top") == pytest.approx(ln(13 / 7))
    assert ex(j, "a big red circle on the left", "a big red circle on the left") == 0.0


def test_a_jittered_pictures_composition_has_its_exact_information(oracle, toy_model):
    """``composition_picture`` finds a support picture of any scene's composition, wherever its jitter put it; no
    caption mentions the jitter, so every picture of one composition has the same exact information."""
    ln = math.log
    lone = [world.sample_scenes(1, seed=s, kind="single")[0] for s in range(3)]
    for sc in lone:
        j = oracle.composition_picture(sc)
        on_grid = oracle.scenes[j]
        assert (on_grid.objects[0].colour, on_grid.objects[0].shape, on_grid.objects[0].position) == (
            sc.objects[0].colour, sc.objects[0].shape, sc.objects[0].position)
        cap = world.with_plain_red(sc).caption()
        other = oracle.index_of(world.lone_scene(sc.objects[0].colour, sc.objects[0].shape, sc.objects[0].size,
                                                 sc.objects[0].position))  # the unjittered picture
        weak = toy_model.remove_word(cap, sc.objects[0].size)
        assert oracle.exact_information(j, cap, weak) == pytest.approx(oracle.exact_information(other, cap, weak))
        assert oracle.exact_information(j, cap, weak) == pytest.approx(ln(2))
    pair = world.with_plain_red(world.sample_scenes(1, seed=11, split="heldout", kind="pair")[0])
    cap = pair.caption()
    j = oracle.composition_picture(pair)
    assert oracle.exact_information(j, cap, toy_model.remove_word(cap, pair.objects[0].colour)) == pytest.approx(ln(5))
    with pytest.raises(ValueError, match="split='all'"):
        orc.WorldDenoiser(toy_model, split="train", progress=False).composition_picture(pair)


@pytest.fixture(scope="module")
def singles(toy_model):
    """A small world for the estimator checks: single objects only, no jitter (150 pictures, uniform
    prior), so that tens of thousands of denoiser evaluations take seconds; i(x; caption) = ln 150."""
    return orc.WorldDenoiser(toy_model, kinds=("single",), jitter_grid=1, progress=False)


def test_the_estimators_match_the_exact_information(singles):
    """Through the real prompt interface (standard form, the estimator's other defaults) on a log-SNR
    range that holds all the information: within 3 standard errors of the exact value. Over 12 seeds at
    n = 4096 the mean was 4.997 ± 0.034 for ln 150 = 5.011 and 1.591 ± 0.008 for ln 5 = 1.609."""
    j = singles.index_of(world.lone_scene("red", "circle", "big", "left"))
    image = singles.image(j)
    cmi = conditional_mutual_information(singles, image, CAPTION, "red", form="standard", n=4096, seed=0,
                                         sampler=FOCUSED, keep_map=False, batch_size=1024)
    assert singles.exact_information(j, CAPTION, "a big circle on the left") == pytest.approx(math.log(5))
    assert cmi.stderr < 0.1 and abs(cmi.value - math.log(5)) < 3 * cmi.stderr, cmi
    mi = mutual_information(singles, image, CAPTION, form="standard", n=4096, seed=1, sampler=FOCUSED, keep_map=False,
                            batch_size=1024)
    assert singles.exact_information(j, CAPTION) == pytest.approx(math.log(150))
    assert mi.stderr < 0.15 and abs(mi.value - math.log(150)) < 3 * mi.stderr, mi


def test_the_estimators_on_the_whole_world(oracle, red_circle):
    """The same on the full support (3150 pictures), fewer samples: at n = 8192 (seed 1) it measured
    5.108 ± 0.074 for i(x; caption) = 5.051 and 1.626 ± 0.035 for i(x; red | rest) = ln 5."""
    j, image = red_circle
    r = prompt_information(oracle, image, CAPTION, words=["red"], form="standard", n=1024, seed=0, sampler=FOCUSED,
                           keep_map=False, batch_size=256)
    for got, exact in ((r.prompt, oracle.exact_information(j, CAPTION)),
                       (r.words["red"], oracle.exact_information(j, CAPTION, "a big circle on the left"))):
        assert got.stderr < 0.4 and abs(got.value - exact) < 3 * got.stderr, (got, exact)


def test_the_default_log_snr_range_truncates(singles, toy_model):
    """The toy model's trained range (-5.36 … 7.07, the estimator's default) misses the information
    below α = -5.36 (above 7.07 there is none: every posterior has settled by α ≈ -1). Over 12 seeds
    (n = 4096): i(x; caption) 3.94 ± 0.05 in range + 1.06 ± 0.02 below = ln 150 = 5.01; i(x; red | rest)
    1.238 ± 0.023 + 0.365 ± 0.007 = ln 5. The default estimate plus the part below adds up to the exact
    value, and the part below is a fifth of it (the oracle module's docstring has the whole world's numbers)."""
    j = singles.index_of(world.lone_scene("red", "circle", "big", "left"))
    image = singles.image(j)
    lo, _ = toy_model.logsnr_range
    below = LogSNRSampler((lo - 30) / 2, (lo + 30) / 12, 6.0)  # exactly [-30, lo]
    assert below.range == pytest.approx((-30, lo))
    kw = dict(words=["red"], form="standard", keep_map=False, batch_size=1024)  # few calls: fast on a busy CPU
    default = prompt_information(singles, image, CAPTION, n=4096, seed=2, sampler=LogSNRSampler.for_model(toy_model), **kw)
    low = prompt_information(singles, image, CAPTION, n=2048, seed=3, sampler=below, **kw)
    for term, exact in ((lambda r: r.prompt, math.log(150)), (lambda r: r.words["red"], math.log(5))):
        d, b = term(default), term(low)
        se = math.hypot(d.stderr, b.stderr)
        assert abs(d.value + b.value - exact) < 3 * se, (d, b, exact)
        assert b.value > 0.15 * exact and b.value > 5 * b.stderr  # the truncation bias is large


def test_the_defaults_through_the_prompt_interface_match_the_exact_values(oracle, red_circle):
    """The estimator's defaults (standard form, the oracle's own range -16 … 8 with half its density
    uniform, antithetic and stratified) through the public calls, on a world picture: within 2.5
    standard errors of the exact values. (The uniform half spends 3/8 of its samples above α = -1, where
    the oracle's integrand is zero, so its error is about 15 % above the logistic's.)"""
    j, image = red_circle
    cmi = conditional_mutual_information(oracle, image, CAPTION, "red", n=512, seed=5, batch_size=256)
    assert cmi.form == "standard" and cmi.params["loc"] == -4.0 and cmi.params["uniform_share"] == 0.5
    assert cmi.stderr < 0.25
    assert abs(cmi.value - math.log(5)) < 2.5 * cmi.stderr, cmi
    mi = mutual_information(oracle, image, CAPTION, n=512, seed=6, batch_size=256)
    assert abs(mi.value - oracle.exact_information(j, CAPTION)) < 2.5 * mi.stderr, mi


def test_caption_scoring_on_the_exact_world_is_always_right(oracle):
    """On the world's own denoiser the true caption of a pair picture beats both swaps for every picture
    (a swapped caption cannot produce the picture: its exact margin is infinite)."""
    from nbhelpers import captions
    from nbhelpers.toyworld.scenes import caption_swaps

    pairs = [sc for sc in oracle.scenes if sc.kind == "pair"][::97][:12]
    study = captions.caption_scoring_study(oracle, [oracle.image(oracle.index_of(sc)) for sc in pairs],
                                           caption_swaps(pairs), n=16)
    acc = study.accuracy()
    assert set(acc) == {"attribute", "relation"}
    for kind, a in acc.items():
        assert a["accuracy"] == 1.0 and a["n"] >= 8, (kind, a)


def test_model_beside_world_table(oracle, toy_model):
    table = orc.model_beside_world(toy_model, oracle, world.lone_scene("red", "circle", "big", "left"), n=16)
    assert list(table.index) == ["i(x; 'a big red circle on the left')", "i(x; big | rest)", "i(x; red | rest)",
                                 "i(x; circle | rest)"]
    assert table.loc["i(x; red | rest)", "world, exact"] == pytest.approx(math.log(5))
    assert np.isfinite(table.to_numpy()).all()


@pytest.mark.parametrize("prompt, attribute, value, world_rate, train_rate", [
    ("a chef", "size", "big", 0.85, 0.85),
    ("a nurse", "colour", "red", 0.85, 0.876),
    ("a pilot", "colour", "blue", 0.85, 0.815),
    ("a bat", "shape", "triangle", 0.5, 0.471),
    ("a red circle", "size", "big", 0.5, 0.375),
    ("a chef on the right", "size", "big", 0.85, 0.739),
    ("a pilot in the middle", "size", "big", 0.5, 1.0),
])
def test_the_training_split_shifts_open_captions_where_held_out_compositions_fall(prompt, attribute, value,
                                                                                   world_rate, train_rate):
    """The world card's table: the world's rates, and the training split's (held-out compositions removed), computed
    from the compositions and the caption process; the bare planted captions stay within 3.5 points."""
    assert orc.attribute_rate(prompt, attribute, value) == pytest.approx(world_rate, abs=1e-9)
    assert orc.attribute_rate(prompt, attribute, value, "train") == pytest.approx(train_rate, abs=5e-4)
    # the same rate from sampled training scenes, for the bare captions (whose caption probability is constant)
    if prompt in ("a chef", "a red circle"):
        scenes = world.sample_scenes(40000, seed=3, split="train")
        noun, colour = ("chef", None) if prompt == "a chef" else ("circle", "red")
        sel = [s for s in scenes if s.kind in ("single", "subject") and s.objects[0].noun == noun
               and (colour is None or (s.objects[0].colour == colour and s.kind == "single"))]
        assert np.mean([s.objects[0].size == "big" for s in sel]) == pytest.approx(train_rate, abs=0.05)


def test_attribute_rate_refuses_what_it_cannot_answer():
    with pytest.raises(ValueError, match="choose size"):
        orc.attribute_rate("a chef", "mood", "happy")
    with pytest.raises(PromptError, match="ever captioned"):
        orc.attribute_rate("a chef on the", "size", "big")
