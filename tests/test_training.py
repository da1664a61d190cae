"""The world models' training script, in miniature: both architectures train, save a pipeline that loads with
``from_pretrained``, resume from their checkpoints and run a second (re-weighted) cycle — planned from the start
or added to a finished run."""
import json
import shutil

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
        {"steps": 2, "kind_weights": {"subject": 3.0}, "reweighting": "extra draws keeping their nouns",
         "high_noise_share": 0.0, "exact_targets_below": None, "open_layout": None, "open_size": None,
         "extra_logsnr_band": None}]
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


def test_open_layout_draws_more_open_captions_and_keeps_their_pictures():
    """``p_open``: extra draws drop their position phrase more often. Which words are dropped never depends on the
    picture, so the pictures behind an open caption ("a chef", "a big green chef") keep the world's positions and
    sizes, while many more such captions are drawn."""
    scenes = world.sample_scenes(3000, seed=1, split="train")
    world_idx = np.random.default_rng(2).integers(0, len(scenes), 60000)
    world_caps = training_captions(scenes, world_idx, None, np.random.default_rng(3))
    idx, extra = KindSampler(scenes, {"subject": 6.0}).draw(np.random.default_rng(4), 60000)
    caps = training_captions(scenes, idx, extra, np.random.default_rng(5), p_open=0.9)
    phrases = [" ".join(p) for p in world.POSITION_PHRASES.values()]
    is_open = lambda c: not any(ph in c for ph in phrases)  # noqa: E731
    assert np.mean([is_open(c) for c, e in zip(caps, extra) if e]) == pytest.approx(0.9, abs=0.02)

    def pictures(ids, captions, noun):
        rows = [scenes[i].objects[0] for i, c in zip(ids, captions) if noun in c.split() and is_open(c)]
        return len(rows), np.mean([o.size == "big" for o in rows]), {p: np.mean([o.position == p for o in rows])
                                                                       for p in world.POSITIONS}
    for noun in ("chef", "nurse"):
        n_w, big_w, pos_w = pictures(world_idx, world_caps, noun)
        n_r, big_r, pos_r = pictures(idx, caps, noun)
        assert n_r > 4 * n_w  # many more open captions of the subject ...
        assert big_r == pytest.approx(big_w, abs=0.05)  # ... of the same pictures
        assert all(pos_r[p] == pytest.approx(pos_w[p], abs=0.05) for p in world.POSITIONS), (pos_r, pos_w)
    # p_open=None draws exactly what it drew before the option existed
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    assert training_captions(scenes, idx[:500], extra[:500], rng_a) == training_captions(scenes, idx[:500], extra[:500],
                                                                                          rng_b, p_open=None)


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


def test_a_high_noise_share_draws_that_share_below_the_threshold():
    """The later cycles' ``high_noise`` share: that share of σ (rectified flow) and of t (DDPM) lies where log-SNR is
    below ``HIGH_NOISE_LOGSNR``, on top of what the base draw puts there; with share 0 the generators are consumed
    exactly as before the option existed (the shipped cycles' streams are unchanged)."""
    from diffusers import DDPMScheduler

    from nbhelpers.toyworld.train_dit import draw_sigmas
    from nbhelpers.toyworld.training_loop import HIGH_NOISE_LOGSNR

    def logsnr_flow(s):
        return 2 * torch.log((1 - s) / s)

    g = torch.Generator().manual_seed(3)  # the draw before the option existed, in its order
    u, ln, pick = torch.rand(64, generator=g), torch.sigmoid(0.5 + torch.randn(64, generator=g)), torch.rand(64, generator=g)
    g = torch.Generator().manual_seed(3)
    assert torch.equal(draw_sigmas(64, g), torch.where(pick < 0.5, u, ln).clamp(1e-4, 1 - 1e-4))
    base = float((logsnr_flow(draw_sigmas(100000, torch.Generator().manual_seed(0))) < HIGH_NOISE_LOGSNR).float().mean())
    high = float((logsnr_flow(draw_sigmas(100000, torch.Generator().manual_seed(0), 0.3)) < HIGH_NOISE_LOGSNR)
                 .float().mean())
    assert 0.08 < base < 0.2 and high == pytest.approx(0.3 + 0.7 * base, abs=0.01)
    assert (logsnr_flow(draw_sigmas(1000, torch.Generator().manual_seed(1), 1.0)) < HIGH_NOISE_LOGSNR).all()

    sched = DDPMScheduler(**train.SCHEDULE)
    logsnr = torch.log(sched.alphas_cumprod / (1 - sched.alphas_cumprod))
    g = torch.Generator().manual_seed(4)
    ref = torch.where(torch.rand(64, generator=g) < 0.5, torch.randint(0, 1000, (64,), generator=g),
                      torch.randint(400, 1000, (64,), generator=g))
    assert torch.equal(train.draw_timesteps(64, torch.Generator().manual_seed(4), sched), ref)
    t = train.draw_timesteps(1000, torch.Generator().manual_seed(5), sched, 1.0)
    assert (logsnr[t] < HIGH_NOISE_LOGSNR).all() and t.min() < 840 and t.max() > 990
    t0 = train.draw_timesteps(100000, torch.Generator().manual_seed(6), sched)
    t3 = train.draw_timesteps(100000, torch.Generator().manual_seed(6), sched, 0.3)
    b, h = (float((logsnr[t] < HIGH_NOISE_LOGSNR).float().mean()) for t in (t0, t3))
    assert h == pytest.approx(0.3 + 0.7 * b, abs=0.01)


def test_high_noise_shares_are_per_cycle_and_checked(tmp_path):
    from nbhelpers.toyworld.training_loop import Cycles

    plan = Cycles(minutes=1, extend_steps=(5, 3, 2), extend_high_noise=(0.0, 0.3))
    assert [plan.high_noise_of(k) for k in range(3)] == [0.0, 0.3, 0.3]
    assert Cycles(minutes=1, extend_steps=(5,)).high_noise_of(0) == 0.0
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Cycles(minutes=1, extend_steps=(5,), extend_high_noise=(1.5,))
    with pytest.raises(SystemExit, match="--extend-high-noise: 1.5"):
        _run(tmp_path / "x", "--extend-steps", "2", "--extend-high-noise", "1.5")


def test_a_finished_run_continues_from_its_saved_pipeline(tmp_path):
    """Checkpoints are not kept in the repository: a shipped toy-dit gains a cycle from its saved pipeline. Its weights
    start the new cycle, its log places the run (steps, first cycle) and the new cycle's record is appended."""
    from diffusers import SD3Transformer2DModel

    args = ["--arch", "dit", "--vae-from", str(TOY_MODEL_DIR), "--max-steps", "2", "--extend-steps", "2"]
    first = tmp_path / "first"
    _run(first, *args)
    shutil.rmtree(tmp_path / "first.ckpt")  # the checkpoint is gone; the saved pipeline is all there is
    with pytest.raises(SystemExit, match="add at least one new cycle"):
        _run(tmp_path / "again", *args, "--from-pipeline", str(first))
    with pytest.raises(SystemExit, match="drew kind weights"):
        _run(tmp_path / "again", *args, "--extend-steps", "1", "--extend-kind-weights", "subject=3",
             "--from-pipeline", str(first))
    with pytest.raises(SystemExit, match="no training_log.json"):
        _run(tmp_path / "again", *args, "--extend-steps", "1", "--from-pipeline", str(tmp_path))
    with pytest.raises(SystemExit, match="--arch dit"):
        _run(tmp_path / "again", "--arch", "unet", "--from-pipeline", str(first))

    # zero learning rate: the continued weights must be the saved ones (EMA of unchanged weights)
    log = _run(tmp_path / "more", *args, "--extend-steps", "2", "--extend-high-noise", "0", "--extend-high-noise",
               "0.5", "--extend-lr", "0", "--from-pipeline", str(first))
    assert log["denoiser_steps"] == 6
    assert [c["high_noise_share"] for c in log["extension"]["cycles"]] == [0.0, 0.5]
    state = json.loads((tmp_path / "more.ckpt" / "dit.json").read_text())
    assert state["step"] == state["total"] == 6 and state["first_total"] == 2
    assert log["continued_from_pipeline"] == [{"step": 4, "folder": str(first)}]
    saved = SD3Transformer2DModel.from_pretrained(first / "transformer").state_dict()
    cont = SD3Transformer2DModel.from_pretrained(tmp_path / "more" / "transformer").state_dict()
    assert all(torch.allclose(saved[k], cont[k]) for k in saved)
    assert not (tmp_path / "again").exists() and not (tmp_path / "again.ckpt").exists()  # refused before any work


def test_a_cycle_on_exact_targets_and_open_layouts_runs_is_logged_and_checked(tmp_path):
    """``--extend-exact-targets``: a later toy-dit cycle trains on the world's exact posterior mean below a log-SNR
    (``exact_targets``); ``--extend-open-layout``: its extra draws drop their position phrase more often. Both are per
    cycle, logged, checked when a run continues, and refused where they do not apply."""
    from nbhelpers.toyworld.training_loop import Cycles, CycleSettings

    plan = Cycles(minutes=1, extend_steps=(5, 3, 2), extend_exact_targets=(None, -4.0))
    assert [plan.exact_below_of(k) for k in range(3)] == [None, -4.0, -4.0]
    assert Cycles(minutes=1, extend_steps=(5,)).exact_below_of(0) is None
    with pytest.raises(ValueError, match="finite"):
        Cycles(minutes=1, extend_steps=(5,), extend_exact_targets=(float("nan"),))
    with pytest.raises(SystemExit, match="--extend-exact-targets: 'low' is not a log-SNR"):
        _run(tmp_path / "x", "--arch", "dit", "--extend-steps", "2", "--extend-exact-targets", "low")
    with pytest.raises(SystemExit, match="--arch dit only"):
        _run(tmp_path / "x", "--arch", "unet", "--extend-steps", "2", "--extend-exact-targets", "-4")
    with pytest.raises(SystemExit, match="--extend-open-layout: '1.5' is not a probability"):
        _run(tmp_path / "x", "--arch", "dit", "--extend-steps", "2", "--extend-open-layout", "1.5")
    with pytest.raises(SystemExit, match="--extend-open-layout is implemented for --arch dit only"):
        _run(tmp_path / "x", "--arch", "unet", "--extend-steps", "2", "--extend-open-layout", "0.5")
    plan = Cycles(minutes=1, extend_steps=(5, 3), extend_high_noise=(0.2,), extend_exact_targets=(None, -4.0),
                  extend_open_layout=(0.75,))
    assert plan.settings_of(None) == CycleSettings()
    assert plan.settings_of(1) == CycleSettings(high_noise=0.2, exact_below=-4.0, open_layout=0.75)

    args = ["--arch", "dit", "--vae-from", str(TOY_MODEL_DIR), "--max-steps", "2", "--extend-steps", "2",
            "--extend-kind-weights", "subject=3", "--extend-exact-targets", "99",  # every row on exact targets
            "--extend-open-layout", "1"]
    first = tmp_path / "first"
    log = _run(first, *args)
    cycle = log["extension"]["cycles"][0]
    assert log["denoiser_steps"] == 4 and (cycle["exact_targets_below"], cycle["open_layout"]) == (99.0, 1.0)
    shutil.rmtree(tmp_path / "first.ckpt")
    more = ["--arch", "dit", "--vae-from", str(TOY_MODEL_DIR), "--max-steps", "2", "--extend-kind-weights", "subject=3",
            "--extend-steps", "2", "--extend-steps", "1", "--from-pipeline", str(first)]
    with pytest.raises(SystemExit, match="had exact_targets_below = 99.0; the plan gives None .*--extend-exact-targets"):
        _run(tmp_path / "again", *more, "--extend-open-layout", "1")
    with pytest.raises(SystemExit, match="had open_layout = 1.0; the plan gives None .*--extend-open-layout"):
        _run(tmp_path / "again", *more, "--extend-exact-targets", "99")


class Recorder:
    """Stands in for the exact oracle in the flow loss: records the log-SNRs of the rows that asked for an exact target."""

    def __init__(self):
        self.calls = []

    def eps(self, z, logsnr, cond):
        self.calls.append(logsnr)
        return torch.zeros_like(z)

    def condition(self, captions):
        return captions

    def pred_x0(self, z, logsnr, eps):
        return z


def test_the_flow_loss_uses_exact_targets_only_below_the_log_snr():
    from nbhelpers.toyworld import train_dit

    pipe = train_dit.build_pipeline(train_dit.load_world_vae(TOY_MODEL_DIR), seed=0)
    scenes = world.sample_scenes(8, seed=0, split="train")
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))

    def loss(exact_below, oracle=None):
        return train_dit.flow_loss(pipe, latents, scenes, np.arange(8), np.random.default_rng(0),
                                   torch.Generator().manual_seed(0), oracle=oracle, exact_below=exact_below)

    with torch.no_grad():
        plain = loss(None)
        rec = Recorder()
        assert float(loss(-99.0, rec)) == float(plain) and rec.calls == []  # no row that noisy
        rec = Recorder()
        assert float(loss(99.0, rec)) != float(plain) and len(rec.calls[0]) == 8  # every row
        rec = Recorder()
        loss(0.0, rec)
        assert 0 < len(rec.calls[0]) < 8 and bool((rec.calls[0] < 0).all())  # just the rows below log-SNR 0


def test_open_size_and_an_extra_noise_band_leave_the_pictures_and_are_logged(tmp_path):
    """``--extend-open-size``: a lone extra draw drops its size word that often (with ``--extend-open-layout 1`` as
    well the caption is bare: "a chef"), never depending on the picture, so a bare caption's pictures keep the world's
    sizes. ``--extend-extra-logsnr``: the extra draws' noise levels lie in that log-SNR band; the others' do not move.
    Both are per cycle, logged, checked when a run continues and refused where they do not apply."""
    from nbhelpers.families.noise import FlowMatching
    from nbhelpers.toyworld import train_dit
    from nbhelpers.toyworld.training_loop import Cycles

    scenes = world.sample_scenes(3000, seed=1, split="train")
    idx, extra = KindSampler(scenes, {"subject": 6.0}).draw(np.random.default_rng(4), 40000)
    caps = training_captions(scenes, idx, extra, np.random.default_rng(5), p_open=1.0, p_size=1.0)
    bare = {f"a {noun}" for noun in world.P_BIG} | {f"a {g} {noun}" for g in ("warm", "cool") for noun in world.P_BIG}
    lone_extra = [(i, c) for i, c, e in zip(idx, caps, extra) if e]
    assert all(c in bare for _, c in lone_extra)  # subjects: noun, maybe the group word, nothing of the layout
    chefs = [scenes[i].objects[0].size == "big" for i, c in lone_extra if c.endswith("chef")]
    world_chefs = [s.objects[0].size == "big" for s in scenes if s.kind == "subject" and s.objects[0].noun == "chef"]
    assert len(chefs) > 1000 and np.mean(chefs) == pytest.approx(np.mean(world_chefs), abs=0.03)
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)  # p_size=None: as before the option existed
    assert training_captions(scenes, idx[:500], extra[:500], rng_a) == training_captions(scenes, idx[:500], extra[:500],
                                                                                          rng_b, p_size=None)

    sig = train_dit.band_sigmas(10000, torch.Generator().manual_seed(0), (-6.0, -2.0))
    logsnr = FlowMatching.logsnr_of_t(sig)
    assert float(logsnr.min()) >= -6.0 - 1e-6 and float(logsnr.max()) <= -2.0 + 1e-6
    assert float(logsnr.min()) < -5.8 and float(logsnr.max()) > -2.2

    pipe = train_dit.build_pipeline(train_dit.load_world_vae(TOY_MODEL_DIR), seed=0)
    few = world.sample_scenes(8, seed=0, split="train")
    latents = torch.randn(8, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    more = np.array([True] * 4 + [False] * 4)

    def logsnrs(band):  # every row asks for an exact target (exact_below=99)
        rec = Recorder()
        with torch.no_grad():
            train_dit.flow_loss(pipe, latents, few, np.arange(8), np.random.default_rng(0),
                                torch.Generator().manual_seed(0), extra=more, oracle=rec, exact_below=99.0,
                                extra_band=band)
        return rec.calls[0]
    plain, banded = logsnrs(None), logsnrs((-6.0, -2.0))
    assert bool(((banded[:4] >= -6.0 - 1e-6) & (banded[:4] <= -2.0 + 1e-6)).all())
    assert not bool(((plain[:4] >= -6.0) & (plain[:4] <= -2.0)).all())  # the band, not chance, put them there
    assert torch.equal(banded[4:], plain[4:])  # the world's own draws keep their noise levels

    with pytest.raises(ValueError, match="low < high"):
        Cycles(minutes=1, extend_steps=(5,), extend_extra_band=((-2.0, -6.0),))
    with pytest.raises(SystemExit, match="--extend-extra-logsnr: '-2' is not a log-SNR band"):
        _run(tmp_path / "x", "--arch", "dit", "--extend-steps", "2", "--extend-extra-logsnr=-2")
    with pytest.raises(SystemExit, match="--extend-open-size: '2' is not a probability"):
        _run(tmp_path / "x", "--arch", "dit", "--extend-steps", "2", "--extend-open-size", "2")
    with pytest.raises(SystemExit, match="--extend-extra-logsnr is implemented for --arch dit only"):
        _run(tmp_path / "x", "--arch", "unet", "--extend-steps", "2", "--extend-extra-logsnr=-6,-2")
    args = ["--arch", "dit", "--vae-from", str(TOY_MODEL_DIR), "--max-steps", "2", "--extend-steps", "2",
            "--extend-kind-weights", "subject=3", "--extend-open-layout", "1", "--extend-open-size", "1",
            "--extend-extra-logsnr=-6,-2"]
    log = _run(tmp_path / "first", *args)
    cycle = log["extension"]["cycles"][0]
    assert (cycle["open_size"], cycle["extra_logsnr_band"]) == (1.0, [-6.0, -2.0])
    shutil.rmtree(tmp_path / "first.ckpt")
    more_args = [*args, "--extend-steps", "1", "--from-pipeline", str(tmp_path / "first")]
    with pytest.raises(SystemExit, match=r"had extra_logsnr_band = \[-6.0, -2.0\]; the plan gives \[-5.0, -2.0\]"):
        _run(tmp_path / "again", *[a.replace("-6,-2", "-5,-2") for a in more_args])
    log = _run(tmp_path / "again", *more_args)  # the logged cycle repeated, one more added
    assert log["denoiser_steps"] == 5 and len(log["extension"]["cycles"]) == 2
