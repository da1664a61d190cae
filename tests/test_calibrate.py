"""The subject-embedding fine-tune moves only the subject nouns: every other prompt is encoded bit for bit as before."""
import json
import shutil

import pytest
import torch

from nbhelpers.model import TOY_MODEL_DIR
from nbhelpers.toyworld import calibrate, world


def _encode(folder, prompts):
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        return text(ids).last_hidden_state


def test_embedding_fine_tune_changes_only_subject_prompts(tmp_path):
    folder = tmp_path / "toy"
    shutil.copytree(TOY_MODEL_DIR, folder)
    others = ["a red circle on the left", "a big bat at the top", "a small crimson square below a blue triangle", ""]
    subjects = [f"a {s}" for s in world.SUBJECT_SHAPES]
    before = _encode(folder, others + subjects)
    threads = torch.get_num_threads()
    record = calibrate.calibrate(folder, steps=4, lr=1e-2, batch=8, n_scenes=16, params="embeddings", threads=1)
    assert torch.get_num_threads() == threads  # threads= is the fine-tune's own; it slowed every later test to 1
    after = _encode(folder, others + subjects)
    assert torch.equal(before[:len(others)], after[:len(others)]), "a prompt without a subject noun changed"
    changed = (before[len(others):] - after[len(others):]).abs().amax(dim=(1, 2)) > 0
    assert changed.any(), "no subject prompt changed"
    assert record["subject_row_shift"] > 0
    log = json.loads((folder / "training_log.json").read_text())
    assert log["fine_tuning"][-1]["params"] == "embeddings"
    with pytest.raises(ValueError, match="params"):
        calibrate.calibrate(folder, params="unet")

