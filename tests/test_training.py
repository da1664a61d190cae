"""The world models' training script, in miniature: both architectures train, save a pipeline that loads with
``from_pretrained``, resume from their checkpoints and run a second (re-weighted) cycle — planned from the start
or added to a finished run."""
import json

import numpy as np
import pytest
import torch

from nbhelpers.model import TOY_MODEL_DIR
from nbhelpers.toyworld import train, world
from nbhelpers.toyworld.train import kind_weights


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
    assert log["denoiser_steps"] == 5 and log["extension"]["cycles"] == [{"steps": 2, "kind_weights": {"subject": 3.0}}]
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
    p = kind_weights(scenes, {"subject": 3.0})
    subject = np.array([s.kind == "subject" for s in scenes])
    share = subject.mean()
    assert p[subject].sum() == pytest.approx(3 * share / (3 * share + 1 - share))
    assert kind_weights(scenes, None) is None


def test_bad_kind_weights_name_the_kinds(tmp_path):
    with pytest.raises(SystemExit, match="kind=weight"):
        _run(tmp_path / "x", "--extend-kind-weights", "people=3")
