"""The world models' training script, in miniature: both architectures train, save a pipeline that loads with
``from_pretrained``, resume from their checkpoints and run a second (re-weighted) cycle — planned from the start
or added to a finished run."""
import json

import numpy as np
import pytest
import torch

from nbhelpers.model import TOY_MODEL_DIR
from nbhelpers.toyworld import train, world
from nbhelpers.toyworld.reweighting import KindSampler, training_captions


def _run(out, *extra):
    train.main(["--out", str(out), "--n-images", "48", "--batch", "4", "--vae-steps", "2",
                "--threads", str(torch.get_num_threads()), *extra])
    return json.loads((out / "training_log.json").read_text())


@pytest.mark.parametrize("arch", ["unet", "dit"])
def test_training_resumes_and_extends(tmp_path, arch):
    from diffusers import DiffusionPipeline

    args = ["--arch", arch, "--vae-from", str(TOY_MODEL_DIR)] if arch == "dit" else ["--arch", arch]
    name = "dit" if arch == "dit" else "denoiser"
    out = tmp_path / arch
    log = _run(out, *args, "--max-steps", "3")
    assert log["denoiser_steps"] == 3 and "extension" not in log
    state = json.loads((tmp_path / f"{arch}.ckpt" / f"{name}.json").read_text())
    assert state["step"] == state["total"] == 3
    log = _run(out, *args, "--max-steps", "3", "--extend-steps", "2", "--extend-kind-weights", "subject=3")
    assert log["denoiser_steps"] == 5 and log["extension"]["cycles"] == [
        {"steps": 2, "kind_weights": {"subject": 3.0}, "reweighting": "extra draws keeping their nouns"}]
    assert json.loads((tmp_path / f"{arch}.ckpt" / f"{name}.json").read_text())["first_total"] == 3
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == ("StableDiffusion3Pipeline" if arch == "dit" else "StableDiffusionPipeline")


def test_a_planned_second_cycle_follows_the_first_in_one_run(tmp_path):
    """The loop is shared by both architectures; the cheaper one shows it."""
    log = _run(tmp_path / "planned", "--arch", "dit", "--vae-from", str(TOY_MODEL_DIR), "--max-steps", "2",
               "--extend-steps", "2")
    assert log["denoiser_steps"] == 4 and "first_cycle_seconds" in log
    # a third cycle added to the finished run, with its own kind weights
    log = _run(tmp_path / "planned", "--arch", "dit", "--vae-from", str(TOY_MODEL_DIR), "--max-steps", "2",
               "--extend-steps", "2", "--extend-steps", "3", "--extend-kind-weights", "pair=2,subject=2",
               "--extend-kind-weights", "subject=6")
    assert log["denoiser_steps"] == 7
    assert [c["kind_weights"] for c in log["extension"]["cycles"]] == [{"pair": 2.0, "subject": 2.0}, {"subject": 6.0}]


def test_later_cycles_have_their_own_schedules():
    from nbhelpers.toyworld.training_loop import Cycles

    plan = Cycles(minutes=1, extend_steps=(5, 3), extend_kind_weights=({"pair": 2.0}, {"subject": 6.0}))
    assert [plan.later_cycle(i) for i in (0, 4, 5, 7)] == [(0, 0), (0, 0), (1, 5), (1, 5)]
    assert plan.weights_of(1) == {"subject": 6.0} and Cycles(minutes=1, extend_steps=(5, 3)).weights_of(1) is None
    one = Cycles(minutes=1, extend_steps=(5, 3), extend_kind_weights=({"pair": 2.0},))
    assert one.weights_of(1) == {"pair": 2.0}


def test_extension_reweights_scene_kinds():
    scenes = world.sample_scenes(2000, seed=0, split="train")
    subject = np.array([s.kind == "subject" for s in scenes])
    share = subject.mean()
    idx, extra = KindSampler(scenes, {"subject": 3.0}).draw(np.random.default_rng(0), 40000)
    expected = 3 * share / (3 * share + 1 - share)
    assert subject[idx].mean() == pytest.approx(expected, abs=0.01)
    assert not extra[~subject[idx]].any() and extra.mean() == pytest.approx(2 * share / (3 * share + 1 - share), abs=0.01)
    # no weights: the world's rates, drawn exactly as a plain uniform draw (the first cycle's stream is unchanged)
    idx, extra = KindSampler(scenes, None).draw(np.random.default_rng(5), 64)
    assert (idx == np.random.default_rng(5).integers(0, 2000, 64)).all() and not extra.any()


def _kind_mix(scenes, idx, captions, which) -> dict:
    kinds = [scenes[i].kind for i, c in zip(idx, captions) if which(c)]
    return {k: kinds.count(k) / len(kinds) for k in world.KIND_RATES}


def test_reweighting_keeps_every_captions_pictures():
    """A caption's pictures are what the denoiser's optimum is made of. With subjects drawn ×6, the empty caption
    (the unconditional denoiser) and the lone captions whose noun and colour were dropped ("a big at the top") still
    come from the world's mix of kinds; the extra draws' captions name their subject noun. Drawing whole kinds more
    often instead (the earlier scheme, simulated here) shifts both: the test tells the two apart."""
    scenes = world.sample_scenes(3000, seed=1, split="train")
    world_idx = np.random.default_rng(2).integers(0, len(scenes), 60000)
    world_caps = training_captions(scenes, world_idx, None, np.random.default_rng(3))
    idx, extra = KindSampler(scenes, {"subject": 6.0}).draw(np.random.default_rng(4), 60000)
    caps = training_captions(scenes, idx, extra, np.random.default_rng(5))
    nouns = set(world.SHAPES) | set(world.SUBJECT_SHAPES) | {world.HOMONYM}
    kind_words = nouns | set(world.COLOURS) | set(world.GROUP_COLOURS) | {world.SYNONYM[0]}
    ambiguous = lambda c: c.split().count("a") == 1 and not set(c.split()) & kind_words  # noqa: E731
    assert 0.01 < np.mean([ambiguous(c) for c in world_caps]) < 0.05  # "a big at the top": about 2.5 % of captions
    for which in (lambda c: c == "", ambiguous):
        want = _kind_mix(scenes, world_idx, world_caps, which)
        got = _kind_mix(scenes, idx, caps, which)
        assert got["subject"] == pytest.approx(want["subject"], abs=0.03), (got, want)
    assert all(scenes[i].objects[0].noun in c.split() for i, c, e in zip(idx, caps, extra) if e)
    assert subject_share(scenes, idx) > 0.4  # the subjects did get ×6 the steps
    # the earlier scheme: whole kinds drawn ×6, empty captions included
    w = np.array([6.0 if s.kind == "subject" else 1.0 for s in scenes])
    old_idx = np.random.default_rng(6).choice(len(scenes), 60000, p=w / w.sum())
    old_caps = training_captions(scenes, old_idx, None, np.random.default_rng(7))
    want = _kind_mix(scenes, world_idx, world_caps, lambda c: c == "")
    assert _kind_mix(scenes, old_idx, old_caps, lambda c: c == "")["subject"] > want["subject"] + 0.2


def subject_share(scenes, idx) -> float:
    return float(np.mean([scenes[i].kind == "subject" for i in idx]))


def test_weights_below_one_are_refused():
    scenes = world.sample_scenes(50, seed=0)
    with pytest.raises(ValueError, match="below 1"):
        KindSampler(scenes, {"pair": 0.5})
    with pytest.raises(ValueError, match="unknown scene kinds"):
        KindSampler(scenes, {"people": 2.0})


def test_bad_kind_weights_name_the_kinds(tmp_path):
    with pytest.raises(SystemExit, match="kind=weight"):
        _run(tmp_path / "x", "--extend-kind-weights", "people=3")
    with pytest.raises(SystemExit, match="below 1"):
        _run(tmp_path / "x", "--extend-kind-weights", "pair=0.5")
