import numpy as np
import pytest

from nbhelpers.toyworld import world
from nbhelpers.toyworld.checker import check_scene, read_image
from nbhelpers.toyworld.world import Scene, WorldObject, sample_scene, sample_scenes


def test_scenes_are_deterministic_by_seed():
    a = [s.caption() for s in sample_scenes(50, seed=3)]
    b = [s.caption() for s in sample_scenes(50, seed=3)]
    c = [s.caption() for s in sample_scenes(50, seed=4)]
    assert a == b and a != c


def test_captions_use_only_world_vocabulary():
    vocab = set(world.vocabulary())
    for s in sample_scenes(500, seed=0, split="all"):
        assert set(s.caption().split()) <= vocab


def test_masks_are_exact_and_match_colours():
    rng = np.random.default_rng(0)
    for _ in range(50):
        s = sample_scene(rng, "pair")
        img = s.render().astype(int)
        masks = s.object_masks()
        assert not (masks[0] & masks[1]).any(), "objects of a pair never overlap"
        for o, m in zip(s.objects, masks):
            # fully covered pixels carry exactly the object's colour
            from nbhelpers.toyworld.world import coverage
            full = coverage(o) == 1.0
            assert full.sum() > 10
            assert (img[full] == np.array(world.COLOURS[o.colour])).all()
            assert m.sum() >= full.sum()
        bg = ~(masks.any(0))
        far = bg & (np.abs(img - np.array(world.BACKGROUND)).sum(-1) > 0)
        assert far.sum() <= 4 * sum(m.sum() for m in masks) ** 0.5 * 2  # only anti-aliased rims


def test_word_masks_point_at_the_right_object():
    s = Scene("pair", (WorldObject("red", "circle", "big", 8, 16, "circle", None, "red"),
                       WorldObject("blue", "square", "small", 24, 16, "square", None, "blue")), "left of")
    wm = dict((w, m) for w, m in s.word_masks() if w in ("red", "square", "left"))
    om = s.object_masks()
    assert (wm["red"] == om[0]).all() and (wm["square"] == om[1]).all()
    assert (wm["left"] == (om[0] | om[1])).all()
    assert s.caption() == "a big red circle left of a small blue square"
    assert [w for w, m in s.word_masks() if m is None] == ["a", "a"]


def test_checker_reads_clean_renders_exactly():
    scenes = sample_scenes(400, seed=11, split="all")
    for s in scenes:
        for r in check_scene(s, s.render()):
            assert all(r.values()), (s.caption(), r)


def test_checker_notices_wrong_images():
    rng = np.random.default_rng(1)
    s = sample_scene(rng, "single")
    other_colour = next(c for c in world.COLOURS if c != s.objects[0].colour)
    wrong = Scene("single", (WorldObject(other_colour, s.objects[0].shape, s.objects[0].size, s.objects[0].cx,
                                         s.objects[0].cy, s.objects[0].shape, s.objects[0].position),))
    r = check_scene(s, wrong.render())[0]
    assert not r["colour"] and r["shape"] and r["position"]
    blank = np.zeros((32, 32, 3), np.uint8) + np.array(world.BACKGROUND, np.uint8)
    assert not check_scene(s, blank)[0]["found"]
    with pytest.raises(ValueError):
        read_image(np.zeros((32, 32)))


def test_held_out_split_is_disjoint_and_stable():
    train = {s.key() for s in sample_scenes(3000, seed=0, split="train")}
    held = {s.key() for s in sample_scenes(300, seed=0, split="heldout")}
    assert not train & held
    frac = np.mean([world.is_held_out(s) for s in sample_scenes(4000, seed=5, split="all")])
    assert abs(frac - 1 / world.HELD_OUT_MODULUS) < 0.03


def test_planted_rates_in_the_world():
    scenes = sample_scenes(20000, seed=2, split="all", kind="subject")
    for noun, (attr, rate) in world.PLANTED_BIAS.items():
        objs = [s.objects[0] for s in scenes if s.objects[0].noun == noun]
        got = np.mean([(o.colour_word == attr) if attr in world.GROUP_COLOURS else (o.size == attr) for o in objs])
        assert abs(got - rate) < 0.03, (noun, got, rate)
    doctor = [s.objects[0] for s in scenes if s.objects[0].noun == "doctor"]
    assert abs(np.mean([o.colour == "red" for o in doctor]) - 0.5) < 0.04
    bats = [s.objects[0] for s in sample_scenes(2000, seed=2, kind="homonym")]
    assert all(o.shape == world.HOMONYM_SHAPE[o.position] for o in bats)
    reds = [o for s in sample_scenes(5000, seed=2, kind="single") for o in s.objects if o.colour == "red"]
    wording = {k: np.mean([o.colour_word == k for o in reds]) for k in world.RED_WORDING_RATES}
    for k, rate in world.RED_WORDING_RATES.items():
        assert abs(wording[k] - rate) < 0.05


def test_random_drop_removes_only_optional_words():
    rng = np.random.default_rng(0)
    s = sample_scene(rng, "single")
    full = s.caption().split()
    for _ in range(20):
        part = s.caption(world.random_drop(rng, s)).split()
        assert part[0] == "a" and all(w in full for w in part)
    assert s.caption({g: True for g in s.optional_groups()}) == "a"
