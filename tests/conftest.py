"""Test setup: offline Hugging Face, no network beyond loopback, fixtures for models."""
import os
import socket

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")
# Every test computes what it checks (tests/test_cache.py switches the cache on for itself).
os.environ["NBHELPERS_CACHE"] = "0"

import pytest  # noqa: E402
import torch  # noqa: E402

_LOOPBACK = ("127.", "::1", "localhost")
_connect = socket.socket.connect


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        host = str(address[0])
        if not host.startswith(_LOOPBACK):
            raise RuntimeError(f"test tried to reach the network ({address}); tests must run offline")
    return _connect(self, address)


socket.socket.connect = _guarded_connect
# The README's test command runs two pytest-xdist workers (CI's machine has two cores): each takes one core, and so
# do the notebook kernels and subprocesses it starts. Run alone (plain `pytest`), a process takes both cores.
# OMP_NUM_THREADS=1 leaves a core to another job.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
torch.set_num_threads(max(1, min(int(os.environ.get("OMP_NUM_THREADS", "2")), 2, (os.cpu_count() or 1) // _WORKERS)))

# Under the README's test command (`--dist loadfile`) a module runs on one worker, so its fixtures are made once. The
# modules whose fixtures generate hundreds of images and the notebook runs (measured 2026-12-05 in one process on two
# threads: 330, 270, 460, 210 and 140 s) go first, so that the two workers finish together.
HEAVY_FIRST = ("test_toy_model", "test_toy_dit", "test_notebooks", "test_bias", "test_info_model")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return HEAVY_FIRST.index(name) if name in HEAVY_FIRST else len(HEAVY_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept


@pytest.fixture(scope="session")
def toy_model():
    from nbhelpers import load_model

    return load_model("toy", device="cpu")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    from nbhelpers.toyworld.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "eps")


@pytest.fixture(scope="session")
def tiny_model(tiny_folder):
    from nbhelpers import load_model

    return load_model(str(tiny_folder), device="cpu")


@pytest.fixture(scope="session")
def tiny_v_model(tmp_path_factory):
    from nbhelpers import load_model
    from nbhelpers.toyworld.tiny import save_tiny_pipeline

    folder = save_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "v", prediction_type="v_prediction", seed=1)
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="session")
def toy_dit_model():
    from nbhelpers import load_model

    return load_model("toy-dit", device="cpu")
