"""Conceptor on every architecture family (issue 16), on the tiny random pipelines: the pseudo-token enters
every text encoder that reads the prompt (SDXL: CLIP-L and OpenCLIP-G; SD3: CLIP-L, OpenCLIP-G and T5; Flux:
T5 and CLIP-L's pooled output; PixArt: T5), the result is the family's full condition, gradients reach the
coefficients, and the pipeline's weights stay frozen (their flags restored after)."""
import numpy as np
import pytest
import torch

from nbhelpers import conceptor as C
from nbhelpers import conceptor_training as T
from nbhelpers.model import DiffusionModel
from nbhelpers.toyworld.tiny import TINY_FAMILIES, tiny_family_pipeline

VOCAB = ["red", "circle", "blue", "square"]  # one token in every encoder of the world's tokenizers
TEMPLATE = "a big {} on the left"
ENCODERS = {"sd": ["CLIP"], "sdxl": ["CLIP-L", "OpenCLIP-G"], "sd3": ["CLIP-L", "OpenCLIP-G", "T5"],
            "flux-dev": ["T5", "CLIP-L (pooled)"], "flux-schnell": ["T5", "CLIP-L (pooled)"], "pixart": ["T5"]}


@pytest.fixture(scope="module")
def models():
    """One tiny model per family. The pipelines are built from configs, so their modules start in training
    mode; ``from_pretrained`` (every real model) puts them in eval mode, which we do here: T5's dropout would
    otherwise make every encoding random."""
    out = {}
    for fam in TINY_FAMILIES:
        pipe = tiny_family_pipeline(fam)
        for mod in pipe.components.values():
            if isinstance(mod, torch.nn.Module):
                mod.eval()
        out[fam] = DiffusionModel(pipe, name=f"tiny-{fam}", image_size=32)
    return out


def _tensors(cond) -> dict:
    return dict(cond.tensors) if hasattr(cond, "tensors") else {"hidden_states": cond}


def _max_diff(a, b) -> float:
    ta, tb = _tensors(a), _tensors(b)
    assert sorted(ta) == sorted(tb) and all(ta[k].shape == tb[k].shape for k in ta)
    return max(float((ta[k].detach().double() - tb[k].detach().double()).abs().max()) for k in ta)


def _one_word_tokens(m, word: str, batch_words=None):
    """Each encoder's pseudo-token for α = one-hot on ``word``, renormalised to that word's own norm (so
    the pseudo-token is exactly the word's input embedding): {label: (d_e,)}, through the functions
    decompose uses (candidate_entries, entry_embeddings, pseudo_tokens)."""
    entries = C.candidate_entries(m, VOCAB)
    emb, averaged = C.entry_embeddings(m, entries)
    assert not averaged  # every word is one token everywhere
    i = [e.word for e in entries].index(word)
    a = torch.zeros(len(entries))
    a[i] = 1.0
    return T.pseudo_tokens(a, emb, {k: float(v[i].norm()) for k, v in emb.items()})


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_text_encoders_are_every_encoder_that_reads_the_prompt(models, fam):
    m = models[fam]
    encs = T.text_encoders(m)
    assert [e.label for e in encs] == ENCODERS[fam]
    for e in encs:
        assert getattr(m.pipe, e.encoder_name) is e.module and getattr(m.pipe, e.tokenizer_name) is e.tokenizer
        assert e.embedding_layers(), e.label  # the layer(s) the hook goes on
    assert {id(mod) for mod in T.pipeline_modules(m)} == {id(v) for v in m.pipe.components.values()
                                                           if isinstance(v, torch.nn.Module)}


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_one_word_pseudo_token_gives_that_words_condition_in_every_encoder(models, fam):
    """All weight on one word: the pseudo-token condition equals the template with that word, every part
    of the condition (hidden states of every encoder, pooled embeddings, masks, time ids) to 1e-5. With
    any one encoder's pseudo-token replaced by its placeholder's own embedding (as if that encoder were
    missed) the condition differs by far more: the check sees each encoder."""
    m = models[fam]
    errs = []
    for word in VOCAB:
        toks = _one_word_tokens(m, word)
        arg = toks if len(toks) > 1 else next(iter(toks.values()))
        cond = T.encode_with_token(m, arg, TEMPLATE)
        ref = m.encode_text(TEMPLATE.format(word))
        assert type(cond) is type(ref)
        errs.append(_max_diff(cond, ref))
    print(fam, "max |pseudo-token condition − word's condition| =", max(errs))
    assert max(errs) < 1e-5
    # a batch of two pseudo-tokens: each row is its own word's condition
    t1, t2 = _one_word_tokens(m, "red"), _one_word_tokens(m, "square")
    both = T.encode_with_token(m, {k: torch.stack([t1[k], t2[k]]) for k in t1}, TEMPLATE)
    assert _max_diff(both, m.encode_text([TEMPLATE.format("red"), TEMPLATE.format("square")])) < 1e-5
    # each encoder matters: leave one at the placeholder's embedding and the condition is another one
    ph, ph_ids = T.placeholder(m, TEMPLATE)
    ref = m.encode_text(TEMPLATE.format("circle"))
    for enc in T.text_encoders(m):
        toks = _one_word_tokens(m, "circle")
        toks[enc.label] = enc.embedding_table()[ph_ids[enc.label]]
        assert _max_diff(T.encode_with_token(m, toks, TEMPLATE), ref) > 1e-3, enc.label


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_gradients_reach_alpha_and_each_encoders_token_and_the_weights_stay_frozen(models, fam):
    m = models[fam]
    entries = C.candidate_entries(m, VOCAB)
    emb, _ = C.entry_embeddings(m, entries)
    norms = {k: float(v.norm(dim=1).mean()) for k, v in emb.items()}
    mods = T.pipeline_modules(m)
    params = [p for mod in mods for p in mod.parameters()]
    odd = params[len(params) // 2]
    odd.requires_grad_(False)  # a mixed set of flags, each restored as it was
    before = [p.requires_grad for p in params]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, *m.latent_shape, generator=g)
    a_snr = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    alphas = torch.rand(len(entries), generator=g).add(0.1).requires_grad_(True)
    try:
        with T.frozen(m):
            assert not any(p.requires_grad for p in params)
            toks = T.pseudo_tokens(alphas, emb, norms)
            for t in toks.values():
                t.retain_grad()
            arg = toks if len(toks) > 1 else next(iter(toks.values()))
            cond = T.encode_with_token(m, arg, TEMPLATE)
            out = m.eps(z, a_snr, cond.expand(2, *cond.shape[1:]), grad=True)  # what train_mixture does
            out.pow(2).mean().backward()
            assert alphas.grad is not None and torch.isfinite(alphas.grad).all() and float(alphas.grad.abs().sum()) > 0
            for k, t in toks.items():  # every encoder's pseudo-token reaches the denoiser's output
                assert t.grad is not None and float(t.grad.abs().sum()) > 0, k
        assert all(p.grad is None for p in params)
        assert [p.requires_grad for p in params] == before
    finally:
        odd.requires_grad_(True)


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_decompose_runs_on_every_family(models, fam, tmp_path):
    m = models[fam]
    flags = [p.requires_grad for mod in T.pipeline_modules(m) for p in mod.parameters()]
    dec = C.decompose(m, "red circle", steps=1, n_train=1, n_val=1, k=2, gen_steps=2, vocabulary=VOCAB,
                      progress=False)
    assert [p.requires_grad for mod in T.pipeline_modules(m) for p in mod.parameters()] == flags
    assert set(dec.labels) == {"blue", "square"} and len(dec.top()) == 2  # the concept's words left out
    assert np.isfinite(dec.alphas).all() and (dec.alphas >= 0).all() and len(dec.losses) == 1
    encs = T.text_encoders(m)
    assert dec.embeddings.shape == (2, encs[0].embedding_table().shape[1])
    assert list(dec.more_embeddings) == [e.label for e in encs[1:]]
    for e in encs[1:]:
        assert dec.more_embeddings[e.label].shape == (2, e.embedding_table().shape[1])
    cond = dec.condition(m)
    ref = m.condition(C.DEFAULT_TEMPLATE.format("red"))
    assert type(cond) is type(ref) and {k: v.shape for k, v in _tensors(cond).items()} == \
        {k: v.shape for k, v in _tensors(ref).items()}
    dec.save(tmp_path / "dec.json")
    back = C.Decomposition.load(tmp_path / "dec.json")
    assert _max_diff(back.condition(m), cond) == 0.0
    sid = C.single_image_decomposition(m, dec, seed=3, start=2, threshold=-1.0, steps=2)
    assert len(sid.tokens) == 1 and len(sid.removed) == 1


def test_same_seeds_give_the_same_decomposition_on_a_three_encoder_family(models):
    m = models["sd3"]
    kw = dict(steps=1, n_train=1, n_val=1, k=2, gen_steps=2, vocabulary=VOCAB, progress=False, lr=1e-2)
    d1, d2 = C.decompose(m, "circle", **kw), C.decompose(m, "circle", **kw)
    assert np.array_equal(d1.alphas, d2.alphas) and d1.losses == d2.losses
    for k in d1.more_embeddings:
        assert np.array_equal(d1.more_embeddings[k], d2.more_embeddings[k])
    assert d1.params["encoders"] == ["CLIP-L", "OpenCLIP-G", "T5"] and d1.params["averaged_pieces"] == {}


def test_words_split_differently_across_encoders(models):
    """Flux's entries are T5 tokens; CLIP writes 'triangle' as tri + angle, so its CLIP row is the mean of
    the two pieces (recorded); SD3's entries are CLIP pieces, each of which is T5's one 'triangle' token.
    ``multi_token="skip"`` keeps only words that every encoder writes whole."""
    flux, sd3 = models["flux-dev"], models["sd3"]
    words = ["triangle", "red"]
    ent = C.candidate_entries(flux, words)
    assert [e.label for e in ent] == ["triangle", "red"]
    emb, averaged = C.entry_embeddings(flux, ent)
    clip = T.text_encoders(flux)[1]
    pieces = C._word_ids(clip.tokenizer, "triangle")
    assert len(pieces) == 2 and averaged == {clip.label: ["triangle"]}
    assert torch.allclose(emb[clip.label][0], clip.embedding_table()[pieces].float().mean(0))
    ent3 = C.candidate_entries(sd3, words)
    assert [e.label for e in ent3] == ["triangle[tri]", "triangle[angle]", "red"]
    emb3, averaged3 = C.entry_embeddings(sd3, ent3)
    t5 = T.text_encoders(sd3)[2]
    assert not averaged3 and torch.equal(emb3["T5"][0], emb3["T5"][1])
    assert torch.equal(emb3["T5"][0], t5.embedding_table()[C._word_ids(t5.tokenizer, "triangle")[0]].float())
    for m in (flux, sd3):
        assert [e.label for e in C.candidate_entries(m, words, multi_token="skip")] == ["red"]


@pytest.mark.parametrize("fam", ["flux-schnell", "pixart"])
def test_whole_word_candidates_of_a_sentencepiece_first_encoder(models, fam):
    m = models[fam]
    labels = {e.label for e in C.candidate_entries(m)}  # no word list: the T5 tokenizer's ▁words
    assert {"red", "circle", "blue"} <= labels
    assert not labels & {"a", "the", "</s>", "<pad>", "<unk>"} and all(len(w) >= 2 for w in labels)


@pytest.mark.parametrize("fam", TINY_FAMILIES)
def test_text_scorer_on_every_family(models, fam):
    """The concept's own prompt scores 1 (cosine with itself), every other word below."""
    scores = C.TextScorer()(models[fam], ["circle", "red", "square"], "a {}", "circle", None, None)
    assert scores.shape == (3,) and scores[0] == pytest.approx(1.0, abs=1e-5) and (scores[1:] < 1 - 1e-4).all()


def test_pooled_text_reads_each_familys_pooled_vector(models):
    c = models["sdxl"].condition(["a red circle"])
    assert torch.equal(C.pooled_text(c), c.text_embeds.float())
    c = models["flux-dev"].condition(["a red circle"])
    assert torch.equal(C.pooled_text(c), c.pooled_projections.float())
    c = models["pixart"].condition(["a red circle"])  # no pooled vector: the mean over the real T5 tokens
    n = int(c.prompt_attention_mask.sum())
    assert torch.allclose(C.pooled_text(c), c.prompt_embeds[:, :n].float().mean(1), atol=1e-6)


def test_a_template_holding_the_placeholder_uses_another_one(models):
    """'_' twice in the prompt cannot mark the pseudo-token's place: the next candidate ('x', one token in
    every encoder here) does, and the one-word check still holds in every encoder."""
    m = models["sd3"]
    template = "a {} _"
    ph, ids = T.placeholder(m, template)
    assert ph == "x" and sorted(ids) == ["CLIP-L", "OpenCLIP-G", "T5"]
    cond = T.encode_with_token(m, _one_word_tokens(m, "circle"), template)
    assert _max_diff(cond, m.encode_text("a circle _")) < 1e-5
    with pytest.raises(ValueError, match=r"no placeholder among .* once, in the template 'x _ thing {}'"):
        T.placeholder(m, "x _ thing {}")


def test_bad_tokens_are_refused_with_the_encoders_named(models):
    m = models["sd3"]
    with pytest.raises(ValueError, match=r"3 text encoders \(CLIP-L, OpenCLIP-G, T5\).*\{label: token\}"):
        T.encode_with_token(m, torch.zeros(32), TEMPLATE)
    toks = _one_word_tokens(m, "red")
    with pytest.raises(ValueError, match=r"given for \['CLIP-L', 'OpenCLIP-G'\].*\['CLIP-L', 'OpenCLIP-G', 'T5'\]"):
        T.encode_with_token(m, {k: v for k, v in toks.items() if k != "T5"}, TEMPLATE)
    with pytest.raises(ValueError, match=r"T5 pseudo-token has shape \(5,\); that encoder's embeddings have 64"):
        T.encode_with_token(m, dict(toks, T5=torch.zeros(5)), TEMPLATE)
    with pytest.raises(ValueError, match="different batch sizes"):
        T.encode_with_token(m, dict(toks, T5=toks["T5"].expand(2, -1), **{"CLIP-L": toks["CLIP-L"].expand(3, -1)}),
                            TEMPLATE)
