"""Executors: a local 2-worker Ray cluster (CPU) gives the same tables as the local executor, bit for bit;
a worker killed mid-run and a driver interrupted mid-run lose nothing and repeat nothing.

One Ray instance for the module (starting one takes ~10 s here, each actor ~5 s to import torch and load the
model); the studies are tiny (the toy model, 3 denoising steps, a few images)."""
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from nbhelpers import bias, tables
from nbhelpers.executors import ExecutorError, LocalExecutor, RayExecutor, model_spec, resolve_executor
from nbhelpers.toyworld import audit as world_audit
from nbhelpers.validate import ArgumentError

AUDIT = dict(subjects=["nurse", "pilot", "chef"], n=4, steps=3, batch=2, reader=world_audit.read_groups,
             dimensions=world_audit.DIMENSIONS, group_words=["warm"], n_pid=1, pid_samples=4)
KEY = list(bias.IMAGE_KEY)


# -- the resumable table (no Ray) ---------------------------------------------------------------------------
def test_table_keeps_one_row_per_key_and_drops_a_cut_off_line(tmp_path):
    t = tables.ResumableTable(tmp_path / "t.csv", ("a", "b"))
    assert t.append([{"a": 1, "b": "x", "v": 0.1 + 0.2}, {"a": 1, "b": "x", "v": 9.0}, {"a": 2, "b": "x", "v": 1e-300}])\
        == [{"a": 1, "b": "x", "v": 0.1 + 0.2}, {"a": 2, "b": "x", "v": 1e-300}]
    assert t.append([{"a": 2, "b": "x", "v": 5.0}]) == []  # a shard computed twice is written once
    with (tmp_path / "t.csv").open("a") as f:
        f.write("3,x,0.5")  # a write cut off by a kill: no newline
    again = tables.ResumableTable(tmp_path / "t.csv", ("a", "b"))
    assert again.done() == {("1", "x"), ("2", "x")} and (1, "x") in again
    assert [float(r["v"]) for r in again.rows()] == [0.1 + 0.2, 1e-300]  # floats read back bit for bit
    assert again.append([{"a": 3, "b": "x", "v": 0.5}])
    assert pd.read_csv(tmp_path / "t.csv").a.tolist() == [1, 2, 3]
    with pytest.raises(ArgumentError, match="lacks"):
        again.append([{"a": 4, "b": "x", "v": 0, "w": 1}])
    with pytest.raises(ArgumentError, match="no column"):
        tables.ResumableTable(tmp_path / "t.csv", ("subject",))
    with pytest.raises(ArgumentError, match=".csv or a .jsonl"):
        tables.ResumableTable(tmp_path / "t.parquet", ("a",))
    j = tables.ResumableTable(tmp_path / "r.jsonl", ("image",))
    j.append([{"image": 0, "iou": [0.25, float("nan")]}])
    assert tables.ResumableTable(tmp_path / "r.jsonl", ("image",)).rows()[0]["iou"][0] == 0.25


def test_executor_argument_and_models_workers_cannot_load(tmp_path):
    assert isinstance(resolve_executor("local"), LocalExecutor) and isinstance(resolve_executor(None), LocalExecutor)
    with pytest.raises(ArgumentError, match="executor='dask'.*'local'.*'ray'"):
        resolve_executor("dask")
    with pytest.raises(ExecutorError, match="load_model"):
        model_spec(world_audit.WorldPictures())
    with pytest.raises(ArgumentError, match="workers=0"):
        RayExecutor(workers=0)


def test_local_executor_never_imports_ray(tiny_folder, tmp_path):
    code = ("import sys; from nbhelpers import load_model, bias\n"
            f"m = load_model({str(tiny_folder)!r}, device='cpu')\n"
            f"bias.run_audit(m, ['circle'], {str(tmp_path / 'a')!r}, n=2, steps=1, save_images=False,"
            " reader=lambda im: {'c': 'a'}, dimensions={'c': ('a', 'b')})\n"
            "assert 'ray' not in sys.modules, 'ray was imported'\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(pd.read_csv(tmp_path / "a" / "images.csv")) == 2


def test_no_cluster_to_join_is_a_clear_error(tmp_path):
    """executor="ray" without a running cluster names the ways out. Ray's temp folder is a fresh one, so
    neither this module's cluster nor a stale /tmp/ray address file (a killed run's) is found."""
    pytest.importorskip("ray")
    code = ("from nbhelpers.executors import RayExecutor, ExecutorError\n"
            "try:\n    RayExecutor().connect()\nexcept ExecutorError as e:\n    print(e)\n")
    env = dict({k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, RAY_TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "no Ray cluster at address='auto'" in r.stdout and "ray start --head" in r.stdout, r.stdout + r.stderr[-1000:]
    assert "start_local=True" in r.stdout


@contextlib.contextmanager
def one_thread():
    """torch on one CPU thread, as each Ray worker here (RayExecutor(cpus_per_worker=1))."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# -- on a local Ray cluster ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_executor():
    ray = pytest.importorskip("ray")
    # this module's readers travel to the workers by value (the workers cannot import tests/)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}})
    ex = RayExecutor(workers=2)
    yield ex
    ex.release()
    ray.shutdown()


@pytest.fixture(scope="module")
def local_audit(toy_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "audit"
    with one_thread():
        return bias.run_audit(toy_model, out=out, **AUDIT)


def _images(audit) -> pd.DataFrame:
    return audit.images().sort_values(KEY).reset_index(drop=True)


def _same_audit(a, b):
    """Same rows (whatever their order on disk), same PNG pixels, same PID numbers, each row once."""
    ia, ib = _images(a), _images(b)
    assert not ib.duplicated(KEY).any()
    pd.testing.assert_frame_equal(ia, ib)
    for p in ia.image:
        assert np.array_equal(np.asarray(Image.open(a.folder / p)), np.asarray(Image.open(b.folder / p))), p
    pa = a.pid().sort_values(list(bias.PID_KEY)).reset_index(drop=True)
    pb = b.pid().sort_values(list(bias.PID_KEY)).reset_index(drop=True)
    assert len(pb) == 3 and not pb.duplicated(list(bias.PID_KEY)).any()
    pd.testing.assert_frame_equal(pa, pb, check_exact=True)


def test_ray_audit_equals_the_local_one(ray_executor, toy_model, local_audit, tmp_path):
    audit = bias.run_audit(toy_model, out=tmp_path / "ray", executor=ray_executor, **AUDIT)
    assert len(audit.images()) == 12
    _same_audit(local_audit, audit)


class CrashOnce:
    """A reader whose worker process dies (os._exit) the first time it is called anywhere (a marker file
    says it has happened), then reads like the world's reader."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __call__(self, image):
        if not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os._exit(1)
        return world_audit.read_groups(image)


def test_a_worker_killed_mid_run_loses_and_repeats_nothing(ray_executor, toy_model, local_audit, tmp_path):
    marker = tmp_path / "crashed"
    audit = bias.run_audit(toy_model, out=tmp_path / "ray", executor=ray_executor, **dict(AUDIT, reader=CrashOnce(marker)))
    assert marker.exists()  # a worker did die on its first shard; Ray restarted it and ran the shard again
    _same_audit(local_audit, audit)


def test_an_interrupted_driver_resumes_from_the_table(ray_executor, toy_model, local_audit, tmp_path, monkeypatch):
    writes = {"n": 0}
    real_append = tables.ResumableTable.append

    def append_then_interrupt(self, rows):
        written = real_append(self, rows)
        writes["n"] += 1
        if writes["n"] == 2:
            raise KeyboardInterrupt("Ctrl-C in the driver")
        return written

    monkeypatch.setattr(tables.ResumableTable, "append", append_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        bias.run_audit(toy_model, out=tmp_path / "ray", executor=ray_executor, **AUDIT)
    monkeypatch.setattr(tables.ResumableTable, "append", real_append)
    first = bias.Audit(tmp_path / "ray", {}).images()
    assert len(first) == 4  # two shards of 2 written before the interruption
    audit = bias.run_audit(toy_model, out=tmp_path / "ray", executor=ray_executor, **AUDIT)
    pd.testing.assert_frame_equal(audit.images().iloc[:4].reset_index(drop=True), first)  # kept as they were
    _same_audit(local_audit, audit)


def test_ray_localisation_equals_the_local_one(ray_executor, toy_model, tmp_path):
    from nbhelpers.localisation import localisation_study
    from nbhelpers.toyworld.scenes import localisation_cases, world_pairs

    scenes, images, masks = world_pairs(3, seed=5)
    cases = localisation_cases(scenes, masks)
    args = dict(n=4, attention_n=2, seed=0, batch_size=8)
    with one_thread():  # as each worker (cpus_per_worker=1): CPU sums depend on the thread count
        here = localisation_study(toy_model, images, cases, **args)
    there = localisation_study(toy_model, images, cases, executor=ray_executor, out=tmp_path / "loc", **args)
    assert len(here.records) == len(there.records) >= 6
    assert here.records == there.records
    for m, curves in here.iou_curves.items():
        assert np.array_equal(curves, there.iou_curves[m]), m
    pd.testing.assert_frame_equal(here.summary(), there.summary(), check_exact=True)
    rows = [json.loads(line) for line in (tmp_path / "loc" / "records.jsonl").read_text().splitlines()]
    assert sorted((r["image"], r["target"]) for r in rows) == sorted(set((r["image"], r["target"]) for r in rows))
    # resumed from the table alone (nothing left to compute): the same result
    again = localisation_study(toy_model, images, cases, executor="local", out=tmp_path / "loc", **args)
    assert again.records == here.records
    with pytest.raises(ArgumentError, match="other settings"):
        localisation_study(toy_model, images, cases, out=tmp_path / "loc", **dict(args, n=6))


def test_ray_caption_scoring_equals_the_local_one(ray_executor, toy_model, tmp_path):
    from nbhelpers.captions import caption_scoring_study
    from nbhelpers.toyworld.scenes import caption_swaps, world_pairs

    scenes, images, _ = world_pairs(3, seed=8)
    captions = caption_swaps(scenes)
    with one_thread():
        here = caption_scoring_study(toy_model, images, captions, n=4, seed=1)
    there = caption_scoring_study(toy_model, images, captions, n=4, seed=1, executor=ray_executor, out=tmp_path / "c")
    assert len(here.records) == sum(len(sw) for _, sw in captions) and here.records == there.records
    again = caption_scoring_study(toy_model, images, captions, n=4, seed=1, out=tmp_path / "c")  # from the table
    assert again.records == here.records


def test_map_calls_fans_out_any_method_in_order(ray_executor, toy_model):
    from nbhelpers.executors import map_calls
    from nbhelpers.info import mutual_information
    from nbhelpers.toyworld.scenes import world_pairs

    scenes, images, _ = world_pairs(3, seed=2)
    calls = [dict(image=im, prompt=sc.caption(), n=4, seed=k) for k, (sc, im) in enumerate(zip(scenes, images))]
    with one_thread():
        here = map_calls(toy_model, mutual_information, calls)
    there = map_calls(toy_model, mutual_information, calls, executor=ray_executor)
    assert [(r.value, r.stderr) for r in here] == [(r.value, r.stderr) for r in there]
    assert len({r.value for r in here}) == 3  # three different images, in the order given
    with pytest.raises(ArgumentError, match="one dict"):
        map_calls(toy_model, mutual_information, ["a red circle"])


def test_emergence_and_conceptor_over_many_inputs_equal_the_local_run(ray_executor, toy_model):
    from nbhelpers import conceptor, timesteps
    from nbhelpers.toyworld.concepts import emergence_reader

    prompts = ["a red circle", "a blue square on the left", "a big green triangle"]
    kw = dict(seeds=[0, 1, 2], steps=3, reader=emergence_reader, batch=1)
    with one_thread():
        here = timesteps.concept_emergence(toy_model, prompts, **kw)
    there = timesteps.concept_emergence(toy_model, prompts, executor=ray_executor, **kw)
    assert np.array_equal(here.settled, there.settled) and np.array_equal(here.logsnrs, there.logsnrs)
    assert here.prompts == there.prompts == prompts
    settings = dict(steps=1, n_train=1, n_val=1, k=2, gen_steps=2, vocabulary=["red", "blue", "circle", "square"])
    with one_thread():
        local = conceptor.decompose_many(toy_model, ["red circle", "blue square"], **settings)
    remote = conceptor.decompose_many(toy_model, ["red circle", "blue square"], executor=ray_executor, **settings)
    assert list(remote) == ["red circle", "blue square"]
    for c in local:
        assert np.array_equal(local[c].alphas, remote[c].alphas), c
