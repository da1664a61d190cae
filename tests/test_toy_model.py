"""The bundled, trained toy pipeline: files, offline loading, and its measured quality.

The numbers asserted here are the ones stated in data/models/toy/README.md."""
import json
from pathlib import Path

import pytest

from nbhelpers.model import TOY_MODEL_DIR
from nbhelpers.toyworld.evaluate import evaluate_quality, planted_rates


def test_files_are_small_safetensors_and_consistent(toy_model):
    files = [p for p in Path(TOY_MODEL_DIR).rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pkl", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    pipe = toy_model.pipe
    assert pipe.tokenizer.model_max_length == pipe.text_encoder.config.max_position_embeddings
    assert len(pipe.tokenizer) == pipe.text_encoder.config.vocab_size > 100
    assert pipe.vae.config.scaling_factor != 1.0  # set from the latents' spread before saving
    assert toy_model.latent_shape == (4, 16, 16) and toy_model.image_size == 32
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    log = json.loads((Path(TOY_MODEL_DIR) / "training_log.json").read_text())
    assert log["denoiser_steps"] > 0


def test_quality_on_heldout_captions(toy_model):
    q = evaluate_quality(toy_model, n_single=120, n_pair=120)
    print("held-out quality:", json.dumps(q.to_dict(), indent=1))
    assert q.n_captions >= 200 and q.n_pairs >= 100
    assert q.accuracy["colour"] >= 0.95, q.accuracy
    assert q.accuracy["position"] >= 0.95, q.accuracy
    assert q.accuracy["shape"] >= 0.85, q.accuracy
    assert q.pair_fully_correct >= 0.75, q.pair_fully_correct


def test_planted_phenomena_show_at_their_rates(toy_model):
    rows = planted_rates(toy_model, n=100)
    for r in rows:
        print(f"{r['prompt']:>22}: {r['attribute']}={r['value']} planted {r['planted']:.2f} "
              f"measured {r['measured']:.2f} (95% CI {r['ci95'][0]:.2f}-{r['ci95'][1]:.2f}, n={r['n']})")
    off = [r for r in rows if abs(r["measured"] - r["planted"]) > 0.10]
    assert not off, off
