"""Model folders checked on load (issue 19): a copy of the bundled toy pipeline, broken in one way
per test, is refused by `check_model_folder` with an error of the right type whose message names the
file (and the fix); the intact copy passes, in milliseconds."""
import inspect
import json
import os
import shutil
import time

import pytest
import torch

import nbhelpers.model
from nbhelpers.errors import NbhelpersError
from nbhelpers.model_folder import (CorruptModelFileError, ModelFileMissingError, ModelFolderError,
                                    UnsafeWeightsError, check_model_folder)

TOY = nbhelpers.model.TOY_MODEL_DIR
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def folder(tmp_path):
    return shutil.copytree(TOY, tmp_path / "toy")


def _refused(folder, cls, *names):
    """check_model_folder raises ``cls``; its message names every one of ``names``."""
    with pytest.raises(cls) as e:
        check_model_folder(folder)
    msg = str(e.value)
    for n in names:
        assert n in msg, (n, msg)
    return msg


def test_the_intact_copy_passes_in_milliseconds(folder):
    check_model_folder(folder)  # warm the file system cache
    t0 = time.perf_counter()
    for _ in range(10):
        check_model_folder(folder)
    assert (time.perf_counter() - t0) / 10 < 0.1  # ~1 ms here: it reads headers, never the tensors
    check_model_folder(TOY)


def test_error_classes_are_the_builtins_a_caller_expects():
    for cls in (ModelFileMissingError, CorruptModelFileError, UnsafeWeightsError):
        assert issubclass(cls, ModelFolderError) and issubclass(cls, NbhelpersError) and issubclass(cls, ValueError)
    assert issubclass(ModelFileMissingError, FileNotFoundError)


# -- model_index.json ------------------------------------------------------------------------------------
def test_corrupt_or_missing_model_index(folder):
    (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", "unet": ["diff')
    _refused(folder, CorruptModelFileError, "model_index.json", "not readable JSON", "save_pretrained")
    (folder / "model_index.json").write_text("[1, 2]")
    _refused(folder, CorruptModelFileError, "model_index.json", "not a mapping")
    (folder / "model_index.json").unlink()
    _refused(folder, ModelFileMissingError, "model_index.json", "missing")


# -- components --------------------------------------------------------------------------------------------
def test_a_listed_component_without_its_folder(folder):
    shutil.rmtree(folder / "vae")
    _refused(folder, ModelFileMissingError, "'vae'", "AutoencoderKL", str(folder / "vae"), "[null, null]")


def test_an_absent_component_marked_null_is_not_checked(folder):
    index = json.loads((folder / "model_index.json").read_text())
    index["image_encoder"] = [None, None]  # already so in the toy; an absent vae the same way
    index["vae"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    shutil.rmtree(folder / "vae")
    check_model_folder(folder)


def test_the_components_load_model_never_loads_are_not_checked(folder):
    index = json.loads((folder / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]  # folder absent
    (folder / "model_index.json").write_text(json.dumps(index))
    check_model_folder(folder)
    with pytest.raises(ModelFileMissingError, match="safety_checker"):
        check_model_folder(folder, ignore=())


def test_a_model_without_config_json(folder):
    (folder / "unet" / "config.json").unlink()
    _refused(folder, ModelFileMissingError, "unet/config.json", "'unet'")
    (folder / "text_encoder" / "config.json").write_text("{not json")
    with pytest.raises(CorruptModelFileError) as e:  # the first problem's class (in the index's order), all listed
        check_model_folder(folder)
    assert "2 problems" in str(e.value) and "text_encoder/config.json" in str(e.value)
    assert "unet/config.json is missing" in str(e.value)


def test_a_scheduler_without_its_config(folder):
    (folder / "scheduler" / "scheduler_config.json").unlink()
    _refused(folder, ModelFileMissingError, "scheduler/scheduler_config.json", "DDIMScheduler")


# -- weights -----------------------------------------------------------------------------------------------
def test_a_truncated_safetensors_file(folder):
    f = folder / UNET
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size - 5)
    msg = _refused(folder, CorruptModelFileError, UNET, "truncated", "5 missing")
    assert "download" in msg  # the fix
    with open(f, "r+b") as fh:
        fh.truncate(1000)  # cut inside the header
    _refused(folder, CorruptModelFileError, UNET)
    with open(f, "r+b") as fh:
        fh.truncate(3)
    _refused(folder, CorruptModelFileError, UNET, "truncated")


def test_a_garbled_safetensors_file(folder):
    f = folder / UNET
    f.write_bytes(os.urandom(f.stat().st_size))
    _refused(folder, CorruptModelFileError, UNET, "not a safetensors file")
    shutil.copy(TOY / UNET, f)
    with open(f, "r+b") as fh:  # the header's length is right but its text is not JSON
        fh.seek(8)
        fh.write(b"\x00garbage\xff")
    _refused(folder, CorruptModelFileError, UNET, "not JSON")
    shutil.copy(TOY / UNET, f)
    with open(f, "ab") as fh:
        fh.write(b"\x00" * 16)
    _refused(folder, CorruptModelFileError, UNET, "16 extra")


def test_a_header_whose_offsets_do_not_fit_its_tensors(folder):
    from safetensors.torch import save_file

    f = folder / UNET
    save_file({"a": torch.zeros(4), "b": torch.zeros(2, 3)}, str(f))
    check_model_folder(folder)  # a valid (if wrong) weights file: the loader will say what is missing
    raw = f.read_bytes()
    assert b'"shape":[4]' in raw
    f.write_bytes(raw.replace(b'"shape":[4]', b'"shape":[5]', 1))  # 5 floats in 16 bytes
    _refused(folder, CorruptModelFileError, UNET, "'a'", "data_offsets")


def test_pickle_weights_are_refused(folder):
    (folder / UNET).rename(folder / "unet" / "diffusion_pytorch_model.bin")
    _refused(folder, UnsafeWeightsError, "safetensors only", "unet/diffusion_pytorch_model.bin",
             "safe_serialization=True", "trusted")
    (folder / "unet" / "diffusion_pytorch_model.bin").rename(folder / "unet" / "model.ckpt")
    _refused(folder, UnsafeWeightsError, "unet/model.ckpt")


def test_pickle_files_next_to_safetensors_are_ignored(folder):
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    check_model_folder(folder)


def test_no_weights_at_all(folder):
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    _refused(folder, ModelFileMissingError, "no weights", str(folder / "vae"), "config.json")


def test_a_link_to_a_missing_blob(folder):
    """A Hugging Face cache snapshot links to blobs; an incomplete download leaves a dangling link."""
    f = folder / "vae" / "diffusion_pytorch_model.safetensors"
    f.unlink()
    f.symlink_to(folder / "blobs" / "0123abcd")
    _refused(folder, ModelFileMissingError, "vae/diffusion_pytorch_model.safetensors", "incomplete download")


def _shard(folder, names):
    """Replace the unet's weights by two valid shards and their index."""
    from safetensors.torch import save_file

    (folder / UNET).unlink()
    for i, name in enumerate(names):
        save_file({f"w{i}": torch.zeros(3)}, str(folder / "unet" / name))
    index = {"metadata": {"total_size": 24},
             "weight_map": {f"w{i}": name for i, name in enumerate(names)}}
    (folder / f"{UNET}.index.json").write_text(json.dumps(index))


def test_a_shard_index_naming_a_missing_shard(folder):
    names = ["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"]
    _shard(folder, names)
    check_model_folder(folder)
    (folder / "unet" / names[1]).unlink()
    _refused(folder, ModelFileMissingError, f"unet/{names[1]}", "diffusion_pytorch_model.safetensors.index.json")
    (folder / f"{UNET}.index.json").write_text('{"weight_map": ')
    _refused(folder, CorruptModelFileError, "diffusion_pytorch_model.safetensors.index.json")


# -- tokenizers --------------------------------------------------------------------------------------------
def test_a_clip_tokenizer_without_its_vocabulary(folder):
    (folder / "tokenizer" / "tokenizer.json").unlink()
    msg = _refused(folder, ModelFileMissingError, str(folder / "tokenizer"), "vocab.json", "merges.txt",
                   "tokenizer.json", "CLIPTokenizer")
    assert "has no vocabulary files" in msg and "save_pretrained" in msg
    (folder / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    msg = _refused(folder, ModelFileMissingError, "lacks merges.txt")
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    check_model_folder(folder)  # the slow tokenizer's files instead of tokenizer.json


def test_a_truncated_or_empty_tokenizer_json(folder):
    f = folder / "tokenizer" / "tokenizer.json"
    f.write_bytes(f.read_bytes()[:500])
    _refused(folder, CorruptModelFileError, "tokenizer/tokenizer.json", "truncated")
    f.write_bytes(b"")
    _refused(folder, CorruptModelFileError, "tokenizer/tokenizer.json", "empty")


def test_a_sentencepiece_tokenizer_needs_spiece_model(folder):
    index = json.loads((folder / "model_index.json").read_text())
    index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "tokenizer_2").mkdir()
    (folder / "tokenizer_2" / "tokenizer_config.json").write_text('{"tokenizer_class": "T5Tokenizer"}')
    _refused(folder, ModelFileMissingError, str(folder / "tokenizer_2"), "spiece.model", "T5TokenizerFast")
    (folder / "tokenizer_2" / "spiece.model").write_bytes(b"\x0a\x01x")
    check_model_folder(folder)


# -- end to end: load_model refuses the broken folder ---------------------------------------------------------
# These need load_model to call check_model_folder for local folders (nbhelpers/model.py); until it
# does they are expected to fail (xfail), and pass as soon as it does.
WIRED = "check_model_folder" in inspect.getsource(nbhelpers.model)
through_load_model = pytest.mark.xfail(not WIRED, strict=True,
                                       reason="load_model does not call check_model_folder yet (nbhelpers/model.py)")


@through_load_model
def test_load_model_refuses_a_folder_without_its_tokenizer(folder):
    """Without the check this folder loads, then fails with an OverflowError at the first generation."""
    from nbhelpers import load_model

    (folder / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(ModelFileMissingError, match="tokenizer"):
        load_model(str(folder), device="cpu")


@through_load_model
def test_load_model_refuses_a_truncated_unet(folder):
    from nbhelpers import load_model

    with open(folder / UNET, "r+b") as fh:
        fh.truncate((folder / UNET).stat().st_size - 7)
    with pytest.raises(CorruptModelFileError, match="diffusion_pytorch_model.safetensors.*truncated"):
        load_model(str(folder), device="cpu")


@through_load_model
def test_load_model_refuses_pickle_weights(folder):
    from nbhelpers import load_model

    (folder / UNET).rename(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError, match="safetensors only"):
        load_model(str(folder), device="cpu")
