"""Every method's public entry point on every architecture family (issue 16), on tiny randomly initialised
pipelines built offline from configs (nbhelpers.toyworld.tiny), and the exact properties of the
text→image attention readers of each family. Random weights: these check code paths and identities,
not the science (the science is checked on the toy world and on closed forms)."""
import numpy as np
import pytest
import torch

from nbhelpers import attention, bias, info, intervention, pid, saliency, timesteps
from nbhelpers.attention import AttentionStore, attention_probs_with_grad, capture_cross_attention
from nbhelpers.families import Condition
from nbhelpers.model import DiffusionModel
from nbhelpers.toyworld.tiny import TINY_FAMILIES, tiny_family_pipeline

PROMPT = "a red circle left of a blue square"


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = DiffusionModel(tiny_family_pipeline(name), name=name, image_size=32)
        return cache[name]
    return get


@pytest.fixture(autouse=True)
def no_cache(monkeypatch):
    monkeypatch.setenv("NBHELPERS_CACHE", "0")


@pytest.mark.parametrize("name", TINY_FAMILIES)
def test_every_method_runs_on_every_family(models, name, tmp_path):
    m = models(name)
    img = m.generate(PROMPT, seed=0, steps=2).images[0]
    h, w = m.latent_shape[1:]
    r = info.prompt_information(m, img, PROMPT, words=["red", "blue"], n=4)
    assert np.isfinite(r.prompt.value) and r.words["red"].map.shape == (h, w)
    assert np.isfinite(info.conditional_mutual_information(m, img, PROMPT, "red", n=4).value)
    assert len(info.caption_scores(m, img, [PROMPT, "a blue circle"], n=4).values) == 2
    info.caption_margins(m, img, PROMPT, ["a blue circle"], n=4)
    p = pid.partial_information(m, img, PROMPT, "red", "circle", n=4)
    assert set(p.values) == {"redundancy", "unique1", "unique2", "synergy"}
    maps = attention.word_attention_maps(m, img, PROMPT, n=2)
    assert set(maps) >= {"red", "blue"} and all(v.shape == (h, w) and np.isfinite(v).all() for v in maps.values())
    tr = timesteps.trace(m, PROMPT, seed=0, steps=3, guidance=3.0)
    assert tr.word_maps.shape[:2] == (3, len(tr.words)) and np.isfinite(tr.word_maps).all()
    rel = timesteps.word_relevance(m, tr)
    assert rel.attention.shape == (3, len(tr.words)) and (rel.attention >= 0).all() and rel.attention.sum() > 0
    sal = saliency.rise_saliency(m, tr, 1, n_masks=4, seed=0)
    cam = saliency.gradcam_saliency(m, tr, 1)
    assert sal.map.shape == cam.map.shape == (h, w) and cam.map.max() > 0
    f = saliency.faithfulness(m, tr, sal, n_points=3, n_random=1)
    assert np.isfinite(f.deletion_auc)
    em = timesteps.concept_emergence(m, ["a red circle"], seeds=[0], steps=3, reader=lambda im: {"colour": "red"},
                                     attributes=("colour",))
    assert em.mean_settled() == {"colour": 0.0}
    iv = intervention.intervention_study(m, img[None], [PROMPT], ["red"], n=4, steps=3)
    assert iv is not None
    audit = bias.run_audit(m, ["teacher"], tmp_path / "audit", n=2, steps=2, reader=lambda im: {"g": "a"},
                           dimensions={"g": ["a", "b"]}, save_images=False)
    assert len(audit.images()) == 2


@pytest.mark.parametrize("name", ["sd3", "flux-dev"])
def test_joint_attention_capture_leaves_the_output_unchanged_and_reads_image_to_text(models, name):
    m = models(name)
    z = torch.randn(2, *m.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = m.condition(["a red circle", "a blue square"])
    plain = m.eps(z, 0.5, cond)
    store = AttentionStore(m.latent_shape[-2:], keep_layers=True)
    with capture_cross_attention(m, store):
        captured = m.eps(z, 0.5, cond)
    assert torch.equal(plain, captured)  # bit for bit: the library's attention still runs
    n_text = cond.prompt_embeds.shape[1]
    assert store.token_maps().shape == (2, n_text, *m.latent_shape[-2:])
    assert len(store.layer_maps()) == len(m.family.text_attention_layers())
    # the explicit attention with gradients computes what the library computes
    with attention_probs_with_grad(m) as rec:
        explicit = m.eps(z, 0.5, cond, grad=True)
    assert (explicit.detach() - plain).abs().max() < 1e-5
    rows, cols = m.family.token_grid()
    for probs in (p for v in rec.values() for p in v):
        assert probs.shape[1:] == (rows * cols, n_text) and probs.requires_grad
        assert float(probs.sum(-1).max()) <= 1 + 1e-5  # a block of a softmax row over image and text keys
    # which block is text: with every text token the same vector (and text positions all 0 in Flux's
    # rotary embedding), every text key is the same, so each image query weighs all text columns alike;
    # image keys differ, so reading the wrong block (a wrong layout) would not give equal columns
    same = Condition("prompt_embeds", prompt_embeds=cond.prompt_embeds[:, :1].expand(-1, n_text, -1).contiguous(),
                     pooled_projections=cond.pooled_projections)
    with attention_probs_with_grad(m) as rec:
        m.eps(z, 0.5, same, grad=True)
    for probs in (p.detach() for v in rec.values() for p in v):
        spread = (probs - probs.mean(-1, keepdim=True)).abs().max()
        assert spread < 1e-6 * float(probs.max()) and float(probs.sum(-1).min()) < 0.999


def test_pixart_attention_gives_padding_no_weight(models):
    m = models("pixart")
    z = torch.randn(1, *m.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = m.condition("a red circle")
    store = AttentionStore(m.latent_shape[-2:])
    with capture_cross_attention(m, store):
        m.eps(z, 0.5, cond)
    maps = store.token_maps()[0]  # (L, h, w)
    real = int(cond.prompt_attention_mask[0].sum())
    assert float(maps[real:].abs().max()) < 1e-6 < float(maps[:real].sum())


@pytest.mark.parametrize("name", ["sd3", "flux-dev", "flux-schnell"])
def test_flow_trajectory_ends_at_the_pipelines_output(models, name):
    """A flow sampler's last step lands on its prediction of x: the recorded (converted) last predicted
    latent must equal the pipeline's output — a check of the velocity → ε → x̂ conversion in a real loop."""
    m = models(name)
    g = m.generate(PROMPT, seed=3, steps=4, guidance=2.0, trajectory=True)
    assert len(g.trajectory) == 4
    assert torch.allclose(g.trajectory[-1].pred_x0, g.latents, atol=1e-4)
    a = [s.logsnr for s in g.trajectory]
    assert all(x < y for x, y in zip(a, a[1:]))  # noise to data


def test_words_have_columns_in_every_encoder_the_denoiser_reads(models):
    sd3, flux = models("sd3"), models("flux-dev")
    # SD3: CLIP tokens (after the start token) and T5 tokens (after the 24 CLIP positions)
    assert sd3.word_positions(PROMPT, "red") == [2, 24 + 1]
    assert sd3.word_positions(PROMPT, "crimson" if False else "blue") == [7, 24 + 6]
    # Flux attends to T5 only; "crimson" is two CLIP pieces but one T5 piece
    assert flux.word_positions("a crimson circle", "crimson") == [1]
    assert models("sdxl").word_positions("a crimson circle", "crimson") == [2, 3]
