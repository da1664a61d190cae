"""ConceptAttention on the MMDiT families (SD3, Flux): tiny random pipelines, CPU.

The exact check: carry the prompt's own text sequence as the concept tokens. Concept tokens attend to
[image, concepts] and prompt tokens to [image, prompt]; with concepts = prompt these are the same
keys and values, and both streams use the text stream's weights and the same ``temb``, so in *every*
layer the concept tokens' attention outputs must equal the prompt tokens' own text-stream outputs
(read independently from the library's attention modules), the concept keys the prompt's keys, and
the maps of every space built from them must equal the maps computed here by hand. A wrong
implementation fails it (each checked by hand-made mutations): image-stream weights, a missed
residual/feed-forward update or gate between layers (the pipelines below have 3 and 2 joint blocks),
a missed rotary embedding of Flux's image keys or queries; concepts also attending to the prompt
would duplicate its keys and fail it too.
"""
import math

import numpy as np
import pytest
import torch

from nbhelpers.concept_attention import (ConceptTokens, carry_concepts, concept_attention_maps, encode_concepts,
                                         joint_blocks)
from nbhelpers.hooks import module_hooks
from nbhelpers.model import DiffusionModel
from nbhelpers.validate import ArgumentError

PROMPT = "a red circle"
CONCEPTS = ["red", "circle", "square"]


def _deep(family: str):
    """A tiny pipeline with more joint blocks than the stock tiny one (SD3: 3, the last context_pre_only;
    Flux: 2 double-stream + 1 single-stream), so the concept stream's residual update between layers is
    exercised."""
    import diffusers as d

    from nbhelpers.toyworld.tiny import tiny_family_pipeline

    pipe = tiny_family_pipeline(family)
    torch.manual_seed(1)
    if family == "sd3":
        tr = d.SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8,
                                     num_attention_heads=2, caption_projection_dim=16, joint_attention_dim=64,
                                     pooled_projection_dim=64, out_channels=4)
    else:
        tr = d.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=1,
                                      attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                      pooled_projection_dim=32, guidance_embeds=family == "flux-dev",
                                      axes_dims_rope=(4, 4, 8))
    pipe = type(pipe)(**{**pipe.components, "transformer": tr})
    for part in pipe.components.values():  # built, not loaded: modules start in training mode (T5's dropout)
        if isinstance(part, torch.nn.Module):
            part.eval()
    return DiffusionModel(pipe, name=family, image_size=32)


@pytest.fixture(scope="module", params=["sd3", "flux-dev"])
def mmdit(request):
    return _deep(request.param)


def _noisy(model, seed=0, n=1, logsnr=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((1, *model.latent_shape), generator=g)
    eps = torch.randn((n, *model.latent_shape), generator=g)
    a = torch.full((n,), float(logsnr), dtype=torch.float64)
    return torch.sigmoid(a).sqrt().float().view(-1, 1, 1, 1) * x + torch.sigmoid(-a).sqrt().float().view(-1, 1, 1, 1) * eps, a, x


def _hook_counts(module):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in module.modules())


def test_the_image_is_unchanged(mmdit):
    z, a, _ = _noisy(mmdit, n=2)
    cond = mmdit.condition(PROMPT)
    plain = mmdit.eps(z, a, cond)
    blocks = joint_blocks(mmdit)
    with carry_concepts(mmdit, encode_concepts(mmdit, CONCEPTS), layers=list(range(len(blocks))),
                        spaces=("output", "projected", "cross_attention")) as rec:
        carried = mmdit.eps(z, a, cond)
    assert rec.layer_maps("output")  # the concepts were carried ...
    err = (carried - plain).abs().max().item()
    assert err <= 1e-5, err  # ... and the denoiser's output is the same


def test_concepts_equal_to_the_prompt_reproduce_its_text_stream_exactly(mmdit):
    cond = mmdit.condition(PROMPT)
    seq = cond.prompt_embeds[0].float()  # (L, D): the prompt's joint text sequence, as the denoiser takes it
    words = ["red", "circle", "a"]
    groups = [mmdit.word_positions(PROMPT, w) for w in words]
    tokens = ConceptTokens(words, seq, groups)  # all L tokens carried; the maps are over three of them
    blocks = joint_blocks(mmdit)
    layers = list(range(len(blocks)))
    # independently: what the library's own attention modules compute for image and prompt tokens
    seen = {i: {} for i in layers}

    def grab(i):
        def attn_out(module, args, output):
            seen[i]["img_proj"], seen[i]["txt_attn_out"] = output[0], output[1]

        def img_raw(module, args):
            seen[i]["img_raw"] = args[0]

        def txt_raw(module, args):
            seen[i]["txt_raw"] = args[0]

        def txt_key(module, args, output):
            seen[i].setdefault("txt_key", output)  # the prompt's call comes first

        def img_query(module, args, output):
            seen[i].setdefault("img_query", output)

        def block_in(module, args, kwargs):
            seen[i]["rope"] = kwargs.get("image_rotary_emb")
        return attn_out, img_raw, txt_raw, txt_key, img_query, block_in

    z, a, _ = _noisy(mmdit, seed=3)
    import contextlib

    with contextlib.ExitStack() as stack:
        for i, b in enumerate(blocks):
            attn_out, img_raw, txt_raw, txt_key, img_query, block_in = grab(i)
            stack.enter_context(module_hooks(b, forward_pre=block_in, with_kwargs=True))
            stack.enter_context(module_hooks(b.attn, forward=attn_out))
            stack.enter_context(module_hooks(b.attn.add_k_proj, forward=txt_key))
            stack.enter_context(module_hooks(b.attn.to_q, forward=img_query))
            stack.enter_context(module_hooks(b.attn.to_out[0], forward_pre=img_raw))
            if b.attn.to_add_out is not None and not getattr(b, "context_pre_only", False):
                stack.enter_context(module_hooks(b.attn.to_add_out, forward_pre=txt_raw))
        rec = stack.enter_context(carry_concepts(mmdit, tokens, layers=layers,
                                                 spaces=("output", "projected", "cross_attention"), keep_vectors=True))
        mmdit.eps(z, a, cond)

    rows, cols = mmdit.latent_shape[1] // 2, mmdit.latent_shape[2] // 2
    worst = 0.0
    for i in layers:
        v = rec.vectors[i][0]
        pre_only = "txt_raw" not in seen[i]
        txt_raw = seen[i]["txt_attn_out"] if pre_only else seen[i]["txt_raw"]  # SD3's last block returns it raw
        # 1. the concept tokens' attention outputs are the prompt tokens' own, in every layer
        scale = txt_raw.abs().max().item()
        worst = max(worst, (v["o_c"] - txt_raw.float()).abs().max().item() / scale)
        if not pre_only:
            worst = max(worst, (v["o_c_proj"] - seen[i]["txt_attn_out"].float()).abs().max().item() / scale)
        # 2. the map: softmax over the three words of the mean dot product over each word's tokens
        for space, img, txt in [("output", seen[i]["img_raw"], txt_raw)] + \
                ([] if pre_only else [("projected", seen[i]["img_proj"], seen[i]["txt_attn_out"])]):
            dots = img[0].double() @ txt[0].double().T  # (N, L)
            by_hand = torch.softmax(torch.stack([dots[:, g].mean(1) for g in groups], 1), 1)  # (N, 3)
            by_hand = by_hand.T.reshape(3, rows, cols)
            ours = rec.layer_maps(space)[i].double()
            worst = max(worst, (ours - by_hand).abs().max().item())
        # 3. cross-attention variant: the concept keys are the prompt's keys (add_k_proj, then the layer's
        # norm; text keys get no rotation in Flux: their position ids are 0) ...
        attn = blocks[i].attn
        heads = attn.heads
        k_txt = seen[i]["txt_key"].unflatten(-1, (heads, -1))
        k_txt = (attn.norm_added_k(k_txt) if attn.norm_added_k is not None else k_txt).transpose(1, 2)
        worst = max(worst, (v["k_c"] - k_txt.float()).abs().max().item() / k_txt.abs().max().item())
        q_img = seen[i]["img_query"].unflatten(-1, (heads, -1))  # (B, N, H, d)
        q_img = attn.norm_q(q_img) if attn.norm_q is not None else q_img
        if seen[i]["rope"] is not None:  # Flux: the image rows of the block's rotary embedding (text comes first)
            from diffusers.models.embeddings import apply_rotary_emb

            cos, sin = seen[i]["rope"]
            q_img = apply_rotary_emb(q_img, (cos[-q_img.shape[1]:], sin[-q_img.shape[1]:]), sequence_dim=1)
        q_img = q_img.transpose(1, 2)  # ... and the image queries are the layer's
        worst = max(worst, (v["q_x"] - q_img.float()).abs().max().item() / q_img.abs().max().item())
        # the map: per head softmax over the words of the mean scaled logit over each word's keys, mean over heads
        logits = (v["q_x"][0].double() @ k_txt[0].double().transpose(-1, -2)) / math.sqrt(k_txt.shape[-1])  # (H, N, L)
        by_hand = torch.softmax(torch.stack([logits[..., g].mean(-1) for g in groups], -1), -1).mean(0)  # (N, 3)
        ours = rec.layer_maps("cross_attention")[i].double()
        worst = max(worst, (ours - by_hand.T.reshape(3, rows, cols)).abs().max().item())
    print(f"\n{mmdit.name}: largest deviation from the identity over {len(layers)} layers: {worst:.2e}")
    assert worst < 1e-5, worst


def test_a_concept_subset_is_not_the_prompt(mmdit):
    """The control for the identity: concepts that are only some of the prompt's tokens attend to a
    different set of keys, so their outputs differ from those tokens' outputs in the prompt."""
    cond = mmdit.condition(PROMPT)
    cols = mmdit.word_positions(PROMPT, "circle")
    seen = {}
    b0 = joint_blocks(mmdit)[0]
    tokens = ConceptTokens(["circle"], cond.prompt_embeds[0, cols].float(), [list(range(len(cols)))])
    z, a, _ = _noisy(mmdit, seed=4)
    def first_call(module, args):  # the prompt's own call comes first (the block runs before our hook)
        seen.setdefault("txt", args[0])

    with module_hooks(b0.attn.to_add_out, forward_pre=first_call), \
            carry_concepts(mmdit, tokens, layers=[0], keep_vectors=True) as rec:
        mmdit.eps(z, a, cond)
    full = seen["txt"][0, cols].float()
    diff = (rec.vectors[0][0]["o_c"][0] - full).abs().max().item() / full.abs().max().item()
    assert diff > 1e-3, diff


@pytest.mark.parametrize("space", ["output", "projected", "cross_attention"])
def test_maps_shape_finite_and_a_distribution_over_concepts(mmdit, space):
    _, _, x = _noisy(mmdit)
    maps = concept_attention_maps(mmdit, x, CONCEPTS, prompt=PROMPT, n=2, seed=0, space=space)
    assert list(maps) == CONCEPTS
    stack = np.stack([maps[c] for c in CONCEPTS])
    assert stack.shape == (3, *mmdit.latent_shape[1:]) and stack.dtype == np.float32
    assert np.isfinite(stack).all() and (stack >= 0).all()
    np.testing.assert_allclose(stack.sum(0), 1.0, atol=1e-5)
    if space == "output":
        again = concept_attention_maps(mmdit, x, CONCEPTS, prompt=PROMPT, n=2, seed=0, space=space)
        np.testing.assert_array_equal(stack, np.stack([again[c] for c in CONCEPTS]))  # same seed, same maps


def test_layers_noise_levels_and_concept_order(mmdit):
    _, _, x = _noisy(mmdit)
    n_blocks = len(joint_blocks(mmdit))
    one = concept_attention_maps(mmdit, x, CONCEPTS, n=2, layers=[0], logsnr=0.0)
    two = concept_attention_maps(mmdit, x, CONCEPTS, n=2, layers=[0, n_blocks - 1], logsnr=[0.0, 2.0])
    assert not np.allclose(one["red"], two["red"])
    swapped = concept_attention_maps(mmdit, x, CONCEPTS[::-1], n=2, layers=[0], logsnr=0.0)
    for c in CONCEPTS:  # the same concepts in another order: the same map per concept
        np.testing.assert_allclose(swapped[c], one[c], atol=1e-5)
    with pytest.raises(ArgumentError, match="layers"):
        concept_attention_maps(mmdit, x, CONCEPTS, n=1, layers=[n_blocks])
    with pytest.raises(ArgumentError, match="concepts"):
        concept_attention_maps(mmdit, x, ["red"], n=1)
    with pytest.raises(ArgumentError, match="twice"):
        concept_attention_maps(mmdit, x, ["red", "red"], n=1)
    with pytest.raises(ArgumentError, match="space"):
        concept_attention_maps(mmdit, x, CONCEPTS, n=1, space="weights")


def test_hooks_are_removed_after_an_error(mmdit):
    den = mmdit.denoiser
    processors = dict(den.attn_processors)
    before = _hook_counts(den)
    tokens = encode_concepts(mmdit, CONCEPTS)
    z, a, _ = _noisy(mmdit)
    with pytest.raises(RuntimeError, match="boom"):
        with carry_concepts(mmdit, tokens, layers=[0]):
            assert _hook_counts(den) > before
            raise RuntimeError("boom")
    assert _hook_counts(den) == before
    bad = ConceptTokens(["x", "y"], torch.zeros(2, tokens.embeds.shape[1] + 1), [[0], [1]])  # wrong width
    with pytest.raises(RuntimeError):  # raised inside a hook, during the denoiser call
        with carry_concepts(mmdit, bad, layers=[0]):
            mmdit.eps(z, a, mmdit.condition(PROMPT))
    assert _hook_counts(den) == before
    assert all(den.attn_processors[k] is p for k, p in processors.items())
    plain = mmdit.eps(z, a, mmdit.condition(PROMPT))  # and the model still runs
    assert torch.isfinite(plain).all()


def test_a_model_without_joint_attention_is_refused():
    from nbhelpers.toyworld.tiny import tiny_family_pipeline

    sd = DiffusionModel(tiny_family_pipeline("sd"), name="sd", image_size=32)
    with pytest.raises(ArgumentError, match=r"joint attention.*sd3.*flux"):
        concept_attention_maps(sd, torch.zeros(1, *sd.latent_shape), CONCEPTS, n=1)
