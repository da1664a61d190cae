"""Concept decomposition after Conceptor (Chefer et al., "The Hidden Language of Diffusion Models", ICLR 2024).

A concept word ("nurse") is explained as a sparse, weighted mixture of vocabulary tokens that, used as one
*pseudo-token*, makes the model draw what the concept draws:

1. **Images.** ``n_train`` training and ``n_val`` validation images of ``template.format(concept)`` are
   generated with fixed seeds (validation seeds follow the training ones and never overlap).
2. **Dictionary.** Candidate tokens are whole words of the vocabulary (function words, start/end/pad tokens
   and, by default, the concept word itself left out) scored against the concept's training images by a
   pluggable scorer; the best ``dictionary_size`` are kept. *Multi-token words* (the toy tokenizer writes
   ``crimson`` = ``crim`` + ``son``, ``triangle`` = ``tri`` + ``angle``) follow ``multi_token``:
   ``"pieces"`` (default) puts each of the word's tokens in the dictionary as its own entry, labelled
   ``word[piece]`` (``triangle[tri]``, ``triangle[angle]``) and scored as the whole word, because a
   pseudo-token is one token and a token is what the text encoder was trained on; ``"skip"`` leaves such
   words out. The candidates are the words of ``vocabulary=`` when one is given (a small model's own
   word list; the toy world's lessons pass the world's words), else the tokenizer's
   whole-word tokens (those that end a word, ``...</w>``, letters only, at least two of them), which is
   the paper's vocabulary for SD (for a sentencepiece tokenizer, T5's: the tokens that start a word,
   ``▁...``). A given vocabulary also bounds the concept: a concept word outside it is refused with the
   vocabulary listed.
3. **Coefficients.** A 2-layer MLP (d → 100 → 1, ReLU, |·|) maps each entry's input embedding ``w_i`` to a
   coefficient ``α_i ≥ 0``. The pseudo-token ``Σ α_i w_i`` is renormalised to ``target_norm`` (the mean
   norm of the input embeddings of the vocabulary's word tokens) and put in place of the placeholder
   of ``template`` in the text encoder's **input token embeddings** (a forward hook on the token
   embedding layer: this transformers' ``CLIPTextModel`` takes no ``inputs_embeds``); with several
   text encoders, in every one of them (below).
4. **Loss.** The denoising loss on the (precomputed) VAE latents of the training images, t uniform,
   noised with :func:`nbhelpers.immse.add_noise`, in ε-space (``model.eps``, which converts v-prediction
   to ε) plus the sparsity term ``λ·(1 − cos(top-k mix, full mix))``. AdamW (fused on CUDA); on a GPU
   the frozen pipeline (every module of ``pipe.components``: denoiser, VAE, text encoders) runs in the
   model's fp16/bf16 with a gradient scaler for fp16, the coefficients stay fp32.
5. **Best step.** Every ``eval_every`` steps the pseudo-token generates the validation seeds; the step
   whose images are most similar to the concept's own validation images (same seeds) wins.

**Families with several text encoders: where the pseudo-token lives.** SDXL reads the prompt with
CLIP-L and OpenCLIP-G, SD3 with CLIP-L, OpenCLIP-G and T5, Flux with T5 (the tokens it attends to) and
CLIP-L (its pooled vector); PixArt has T5 alone. The coefficients α are over vocabulary *words*
(dictionary entries), and the pseudo-token lives in **every** encoder's own input-embedding space at
once: in encoder e it is ``Σ α_i E_e[word_i]``, renormalised to that encoder's own ``target_norm_e``.
One α, one pseudo-token per encoder, all put in place of the same placeholder, each by a hook on its
encoder's token-embedding layer; the pipeline's own ``encode_prompt`` then makes the full condition
(hidden states, pooled embeddings, masks, time ids), differentiable in α. Why: (i) an embedding vector
means something only in the table it was trained with: CLIP-L's 768 dimensions, OpenCLIP-G's 1,280 and
T5's 4,096 are unrelated spaces, so no one encoder's vector can stand in for the others; (ii) an encoder
left out would keep reading either the concept word (which then draws the concept by itself, and the
mixture learns nothing: for Flux, a pseudo-token only in CLIP would touch only the pooled vector while
T5 still says "nurse") or a meaningless placeholder, a condition the denoiser never saw, explained by
nobody; (iii) a decomposition is a statement about words ("nurse ≈ 0.6 circle + 0.3 warm"): one α
over words keeps it one statement whatever the family, and with all weight on one word every encoder
receives exactly that word's embedding (up to the norm), so the condition is the template with that word
(``tests/test_conceptor_families.py`` checks it to 1e-5 in every encoder of every family). Entries are
the pieces of the family's **first** encoder (``model.tokenizer``: CLIP-L for SDXL and SD3, T5 for Flux
and PixArt; labels, ``token_id`` and ``Decomposition.embeddings`` are that encoder's); in each other
encoder an entry is embedded as the same piece when that encoder splits the word into as many pieces,
else as the mean of that encoder's pieces of the word (its one token when it writes the word whole:
``triangle[tri]`` and ``triangle[angle]`` are both T5's ``▁triangle``; a different split is averaged, an
approximation recorded in ``params["averaged_pieces"]``). ``multi_token="skip"`` keeps only words that
every encoder writes as one token. The coefficient MLP reads an entry's embeddings in all encoders side
by side; the sparsity term is the mean of the encoders' terms. Each encoder's pseudo-token is in
``Decomposition.tokens()``.
The placeholder is ``_`` unless an encoder writes it as several tokens (a sentencepiece vocabulary without
a ``▁_`` piece writes ``▁`` + ``_``); then the first of ``conceptor_training.PLACEHOLDER_CANDIDATES`` that
every encoder writes as one token, once in the template.

The training hyper-parameters (``k``, ``steps``, ``lr``, ``batch_size``, ``sparsity``, ``eval_every``, ``hidden``,
``standardise``, ``n_train``, ``n_val``, ``seed``, ``gen_steps``, ``guidance``) form a
:class:`~nbhelpers.conceptor_training.ConceptorConfig`, passed as ``decompose(..., config=)`` or field by
field as keywords. Steps 3-5 (the coefficient MLP, the pseudo-token, the training loop
:func:`~nbhelpers.conceptor_training.train_mixture`) live in :mod:`nbhelpers.conceptor_training`; this
module holds the images, the dictionary, :func:`decompose` and the results.

The result is a :class:`Decomposition` (top-k tokens and weights, the α history, the pseudo-token) that
saves and loads losslessly (JSON). :func:`single_image_decomposition` prunes the mixture greedily to the
few tokens that keep one seed's image, and :func:`manipulate` rescales one token's weight and regenerates
with the same seed.

**Image similarity** (best step and single-image pruning) is pluggable: ``similarity(a, b) -> float`` on two
uint8 images. The default, :func:`pixel_similarity`, is the Pearson correlation of the two images' pixel
values (all pixels and channels): 1 for the same image, about 0 for unrelated scenes, negative when the
same shape comes in an opposite colour. It suits the toy world's flat shapes; on real models use
:func:`clip_image_similarity` (cosine of CLIP image embeddings, the paper's measure; the paper's pruning
threshold 0.93 refers to it).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .cache import cached
from .conceptor_training import (DEFAULT_TEMPLATE, ConceptorConfig, check_template, encode_with_token,  # noqa: F401
                                 pseudo_token, pseudo_tokens, text_encoders, train_mixture)
from .immse import add_noise
from .metrics import pearson
from .validate import ArgumentError, seeds as seed_list, validated

# Function words never used as dictionary entries (common English ones).
STOP_WORDS = frozenset("""a an the on at in of and or to with by for from as is are was be it its this that
these those there their his her he she they we you i my your our not no but if then so than into onto over
under up down out off about""".split())
VAL_SEED_OFFSET = 100_000  # validation seeds are seed + VAL_SEED_OFFSET + j


# --- small helpers ---------------------------------------------------------------------------------
def _check_concept(model, concept: str, template: str, vocabulary: Sequence[str] | None = None) -> str:
    """Refuse a concept that is not a string, is empty, has a word outside ``vocabulary`` (when given;
    else one the tokenizer cannot spell) or makes the prompt too long."""
    from .errors import EmptyPromptError, PromptError

    if not isinstance(concept, str):
        raise PromptError(f"concept must be a string, got {type(concept).__name__} ({concept!r})")
    if not concept.strip():
        raise EmptyPromptError("the concept is empty; give a word such as 'nurse'")
    tok = model.tokenizer
    vocab = tok.get_vocab()
    words = [w.lower() for w in concept.split()]
    if vocabulary is not None:
        vocabulary = list(vocabulary)
        known = {v.lower() for v in vocabulary}
        unknown = [w for w in words if w not in known]
        if unknown:
            raise ArgumentError(f"the vocabulary has no word {unknown[0]!r}; its words are: {', '.join(vocabulary)}")
    else:  # a real tokenizer spells every string; refuse only pure character soup
        pieces = tok.tokenize(concept)
        if any(p == tok.unk_token for p in pieces) or not pieces or not all(p in vocab for p in pieces):
            raise ArgumentError(f"the tokenizer cannot spell the concept {concept!r}")
    model.tokenize(template.format(concept))  # raises if too long
    return concept


def _seed_list(seeds) -> list[int]:
    return [int(s) for s in (seeds if isinstance(seeds, (list, tuple, range, np.ndarray)) else [seeds])]


# --- images ----------------------------------------------------------------------------------------
@validated(rules={"seeds": seed_list})
def concept_images(model, concept: str, seeds, template: str | None = None, steps: int = 25, guidance: float = 3.0,
                   batch_size: int = 16) -> np.ndarray:
    """uint8 images (N, H, W, 3) of ``template.format(concept)``, one per seed (``model.generate``)."""
    template = check_template(template)
    prompt = template.format(concept)
    seeds = _seed_list(seeds)
    out = []
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i : i + batch_size]
        out.append(model.generate([prompt] * len(chunk), seed=chunk, steps=steps, guidance=guidance).images)
    return np.concatenate(out)


@validated(rules={"seeds": seed_list})
def generate_from_condition(model, cond, seeds, steps: int = 25, guidance: float = 3.0,
                            batch_size: int = 16) -> np.ndarray:
    """uint8 images (N, H, W, 3) from a condition ``cond`` (batch 1, or one per seed; SD's hidden states
    (B, L, D) or another family's :class:`~nbhelpers.families.Condition`): ``model.generate(cond=...)``
    in batches (the family's null condition as the negative, each seed's own noise)."""
    seeds = _seed_list(seeds)
    if cond.shape[0] not in (1, len(seeds)):
        raise ArgumentError(f"cond has batch {cond.shape[0]}; give 1 or one per seed ({len(seeds)})")
    imgs = []
    for i in range(0, len(seeds), batch_size):
        chunk = seeds[i : i + batch_size]
        c = cond if cond.shape[0] == 1 else cond[i : i + len(chunk)]
        imgs.append(model.generate(None, seed=chunk, steps=steps, guidance=guidance, cond=c).images)
    return np.concatenate(imgs)


def pixel_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two images' pixel values (all pixels and channels), in [-1, 1]
    (:func:`nbhelpers.metrics.pearson`; two constant images: 1 if equal, else 0)."""
    if np.shape(a) != np.shape(b):
        raise ArgumentError(f"images of different sizes: {np.shape(a)} and {np.shape(b)}")
    r = pearson(a, b)
    return float(np.array_equal(a, b)) if np.isnan(r) else r


def clip_image_similarity(clip_model, processor, device: str | torch.device = "cpu") -> Callable:
    """The paper's measure for real models: cosine similarity of CLIP image embeddings. Pass a loaded
    ``transformers.CLIPModel`` and its ``CLIPProcessor``; returns ``similarity(a, b) -> float``."""

    @torch.no_grad()
    def similarity(a, b) -> float:
        inputs = processor(images=[np.asarray(a), np.asarray(b)], return_tensors="pt").to(device)
        e = clip_model.get_image_features(**inputs)
        e = e / e.norm(dim=-1, keepdim=True)
        return float((e[0] * e[1]).sum())

    return similarity


# --- the dictionary ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entry:
    """One dictionary entry: a token of ``word`` (``piece`` of ``n_pieces``)."""

    token_id: int
    token: str
    word: str
    piece: int = 0
    n_pieces: int = 1

    @property
    def label(self) -> str:
        if self.n_pieces == 1:
            return self.word
        return f"{self.word}[{self.token.replace('</w>', '')}]"


def _word_tokens(tokenizer, word: str) -> list[int]:
    return list(tokenizer(word, add_special_tokens=False)["input_ids"])


def _word_ids(tokenizer, word: str) -> list[int]:
    special = set(tokenizer.all_special_ids)
    return [i for i in _word_tokens(tokenizer, word) if i not in special]


def _whole_word_marker(vocab: dict) -> tuple[str, str]:
    """How the tokenizer marks a whole word: CLIP's BPE ends it with ``</w>``, sentencepiece (T5) starts
    it with ``▁``; returned as (prefix, suffix)."""
    return ("", "</w>") if any(t.endswith("</w>") for t in vocab) else ("\u2581", "")


def _other_encoders(model) -> list:
    """The family's text encoders after the first (whose tokens the entries are); [] for SD 1.x/2.x."""
    return text_encoders(model)[1:]


def candidate_entries(model, vocabulary: Sequence[str] | None = None, exclude: Sequence[str] = (),
                      multi_token: str = "pieces") -> list[Entry]:
    """The dictionary's candidates (see the module docstring): entries for the words of ``vocabulary``
    (default: every whole-word token of the first encoder's tokenizer) minus :data:`STOP_WORDS` and
    ``exclude``. Entries are the first encoder's tokens; with ``multi_token="skip"`` a word is kept only
    if every text encoder of the family writes it as one token."""
    if multi_token not in ("pieces", "skip"):
        raise ArgumentError(f"multi_token must be 'pieces' or 'skip', not {multi_token!r}")
    tok = model.tokenizer
    special = set(tok.all_special_ids)
    drop = {w.lower() for w in exclude} | STOP_WORDS
    others = [e.tokenizer for e in _other_encoders(model)]

    def fits_elsewhere(w: str) -> bool:
        """Every other encoder spells ``w`` (with "skip": as one token)."""
        counts = [len(_word_ids(t, w)) for t in others]
        return all(n == 1 for n in counts) if multi_token == "skip" else all(counts)

    entries: list[Entry] = []
    seen: set[int] = set()
    if vocabulary is None:
        vocab = tok.get_vocab()
        pre, suf = _whole_word_marker(vocab)
        for t, i in sorted(vocab.items(), key=lambda kv: kv[1]):
            if not (t.startswith(pre) and t.endswith(suf)) or len(t) <= len(pre) + len(suf) or i in special:
                continue
            w = t[len(pre): len(t) - len(suf)]
            if len(w) >= 2 and w.isalpha() and w.lower() not in drop and i not in seen:
                if others and not fits_elsewhere(w):
                    continue
                seen.add(i)
                entries.append(Entry(i, t, w))
        return entries
    for w in vocabulary:
        if w.lower() in drop:
            continue
        ids = [i for i in _word_tokens(tok, w) if i not in special]
        if not ids or (len(ids) > 1 and multi_token == "skip"):
            continue
        if others and not fits_elsewhere(w):
            continue
        for j, i in enumerate(ids):
            if i not in seen:
                seen.add(i)
                entries.append(Entry(i, tok.convert_ids_to_tokens(i), w, j, len(ids)))
    return entries


def entry_embeddings(model, entries: Sequence[Entry]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Each entry's input embedding in every text encoder of the family: ({encoder label: (n, d_e) float32
    on the CPU}, {label: words whose pieces were averaged there}). The first encoder's rows are the
    entries' own tokens; in another encoder an entry is the same piece of its word when that encoder
    splits the word into as many pieces, else the mean of that encoder's pieces of the word (the word's
    one token when it writes it whole). See the module docstring."""
    encs = text_encoders(model)
    first = encs[0].embedding_table().float().cpu()
    out = {encs[0].label: first[[e.token_id for e in entries]]}
    averaged: dict[str, list[str]] = {}
    for enc in encs[1:]:
        table = enc.embedding_table().float().cpu()
        rows = []
        for e in entries:
            ids = _word_ids(enc.tokenizer, e.word)
            if not ids:
                raise ArgumentError(f"the {enc.label} tokenizer writes {e.word!r} as no token; leave it out of the "
                                    "vocabulary")
            if len(ids) == e.n_pieces:
                rows.append(table[ids[e.piece]])
            else:
                rows.append(table[ids].mean(0))
                if len(ids) > 1 and e.word not in averaged.get(enc.label, []):
                    averaged.setdefault(enc.label, []).append(e.word)
        out[enc.label] = torch.stack(rows) if rows else table[:0]
    return out, averaged


class DenoiserScorer:
    """The model's own image–text agreement: for each word, the mean reduction of the denoising error
    on the concept's images when the denoiser is told ``template.format(word)`` instead of nothing,
    ``E[||ε − ε̂(z_α)||² − ||ε − ε̂(z_α | word)||²]`` over the images, t uniform, with the same (t, ε)
    for every word (a pointwise-information-style score, per latent element). ``n_images`` images and
    ``n_draws`` noise draws per image."""

    name = "denoiser"

    def __init__(self, n_images: int = 8, n_draws: int = 2, batch_size: int = 64):
        self.n_images, self.n_draws, self.batch_size = n_images, n_draws, batch_size

    @torch.no_grad()
    def __call__(self, model, words: list[str], template: str, concept: str, images, latents, seed: int = 0):
        x = latents[: self.n_images]
        g = torch.Generator("cpu").manual_seed(seed)
        x = x.repeat_interleave(self.n_draws, 0)
        n_t = model.pipe.scheduler.config.num_train_timesteps
        t = torch.randint(0, n_t, (len(x),), generator=g).double()
        a = model.logsnr_of(t)
        e = torch.randn(x.shape, generator=g)
        z = add_noise(x.cpu(), a, e)
        base = (model.eps(z, a, None, max_batch=self.batch_size).cpu() - e).pow(2).mean((1, 2, 3))
        conds = model.encode_text([template.format(w) for w in words])
        scores = []
        for k in range(len(words)):
            err = (model.eps(z, a, conds[k : k + 1], max_batch=self.batch_size).cpu() - e).pow(2).mean((1, 2, 3))
            scores.append(float((base - err).mean()))
        return np.asarray(scores)


def pooled_text(cond) -> torch.Tensor:
    """One vector per prompt (B, D) from a family's condition, for :class:`TextScorer`: SDXL's pooled
    OpenCLIP-G embedding (``text_embeds``), SD3's pooled CLIP-L and OpenCLIP-G (``pooled_projections``),
    Flux's pooled CLIP-L (``pooled_projections``); PixArt, which has no pooled vector, the mean of T5's
    hidden states over its attention mask (the real tokens)."""
    tensors = getattr(cond, "tensors", {})
    for name in ("text_embeds", "pooled_projections"):
        if name in tensors:
            return tensors[name].float()
    h = cond.prompt_embeds.float() if tensors else cond.float()
    mask = tensors.get("prompt_attention_mask")
    if mask is None:
        return h.mean(1)
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1)


class TextScorer:
    """Cheap, image-free: cosine similarity of the text encoder's pooled output (its end token) for
    ``template.format(word)`` and ``template.format(concept)``. For very large vocabularies (SD's
    49k tokens) where scoring every word with the denoiser would take too long. Families other than SD
    1.x/2.x use their condition's pooled vector (:func:`pooled_text`)."""

    name = "text"

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, model, words, template, concept, images, latents, seed: int = 0):
        one_clip = len(_other_encoders(model)) == 0 and getattr(model.family, "name", "sd") == "sd"

        def pooled(prompts):
            out = []
            for i in range(0, len(prompts), self.batch_size):
                chunk = prompts[i : i + self.batch_size]
                if one_clip:  # SD 1.x/2.x: CLIP's pooled output (its end token)
                    ids = model.tokenizer(chunk, padding="max_length", max_length=model.max_tokens, truncation=True,
                                          return_tensors="pt").input_ids
                    out.append(model.pipe.text_encoder(ids.to(model.device))[1].float().cpu())
                else:
                    out.append(pooled_text(model.family.encode(chunk, model.device, model.dtype)).cpu())
            return torch.cat(out)

        ref = pooled([template.format(concept)])
        emb = pooled([template.format(w) for w in words])
        return torch.nn.functional.cosine_similarity(emb, ref).numpy()


def _resolve_scorer(scorer, n_words: int):
    if callable(scorer) and not isinstance(scorer, str):
        return scorer
    if scorer == "auto":
        scorer = "denoiser" if n_words <= 512 else "text"
    if scorer == "denoiser":
        return DenoiserScorer()
    if scorer == "text":
        return TextScorer()
    raise ArgumentError(f"scorer must be 'auto', 'denoiser', 'text' or a callable "
                     f"scorer(model, words, template, concept, images, latents, seed=...) -> one score per word; "
                     f"got {scorer!r}")


@dataclass
class Dictionary:
    """The dictionary's entries, their input embeddings (n, d) in the first text encoder, scores, and the
    pseudo-token's norm there; for a family with several encoders, ``encoder`` (the first's label) and
    ``more_embeddings``/``more_norms`` ({label: (n, d_e)}, {label: norm}) for the others, and
    ``averaged`` ({label: words whose pieces were averaged}, see :func:`entry_embeddings`)."""

    entries: list[Entry]
    embeddings: torch.Tensor
    scores: np.ndarray
    target_norm: float
    scorer: str
    encoder: str = ""
    more_embeddings: dict = field(default_factory=dict)
    more_norms: dict = field(default_factory=dict)
    averaged: dict = field(default_factory=dict)

    def spaces(self):
        """What :func:`~nbhelpers.conceptor_training.train_mixture` takes: (embeddings, target_norm) for one
        encoder, ({label: (n, d_e)}, {label: norm}) for several."""
        if not self.more_embeddings:
            return self.embeddings, self.target_norm
        return ({self.encoder: self.embeddings, **self.more_embeddings},
                {self.encoder: self.target_norm, **self.more_norms})


def build_dictionary(model, concept: str, images=None, latents=None, vocabulary: Sequence[str] | None = None,
                     scorer="auto", size: int = 5000, exclude_concept: bool = True, exclude: Sequence[str] = (),
                     multi_token: str = "pieces", template: str | None = None, seed: int = 0) -> Dictionary:
    """Score the candidate tokens against the concept's images and keep the best ``size``.

    ``scorer``: "denoiser" (:class:`DenoiserScorer`, the model's own, needs ``latents``), "text"
    (:class:`TextScorer`), "auto" (denoiser for up to 512 words, else text) or any callable
    ``scorer(model, words, template, concept, images, latents, seed=...)`` returning one score per word
    (higher: a better candidate). ``vocabulary``: the candidate words (see :func:`candidate_entries`).
    ``target_norm`` is the mean norm of all candidates' input embeddings (in each encoder, its own)."""
    template = check_template(template)
    excl = list(exclude) + (concept.lower().split() if exclude_concept else [])
    entries = candidate_entries(model, vocabulary, excl, multi_token)
    if not entries:
        raise ArgumentError("the dictionary is empty: no candidate word is left after the exclusions; "
                         "pass vocabulary=[...]")
    per_encoder, averaged = entry_embeddings(model, entries)
    labels = list(per_encoder)
    all_emb = per_encoder[labels[0]]
    target_norm = float(all_emb.norm(dim=1).mean())
    uniq = list(dict.fromkeys(e.word for e in entries))
    sc = _resolve_scorer(scorer, len(uniq))
    if latents is None and images is not None:
        latents = model.encode_image(images).cpu()
    word_scores = dict(zip(uniq, np.asarray(sc(model, uniq, template, concept, images, latents, seed=seed), float)))
    scores = np.array([word_scores[e.word] for e in entries])
    order = np.argsort(-scores, kind="stable")[: int(size)]
    kept = [entries[i] for i in order]
    more = {lab: per_encoder[lab][order].clone() for lab in labels[1:]}
    norms = {lab: float(per_encoder[lab].norm(dim=1).mean()) for lab in labels[1:]}
    kept_words = {e.word for e in kept}
    averaged = {lab: [w for w in ws if w in kept_words] for lab, ws in averaged.items()}
    return Dictionary(kept, all_emb[order].clone(), scores[order], target_norm, getattr(sc, "name", type(sc).__name__),
                      labels[0] if len(labels) > 1 else "", more, norms, {k: v for k, v in averaged.items() if v})


# --- the result ------------------------------------------------------------------------------------------
@dataclass
class Decomposition:
    """A concept as a mixture of dictionary tokens.

    ``alphas``: the coefficients at the best step (one per entry, in dictionary order); ``k``: how many
    tokens the top of the mixture keeps; ``alpha_history`` (n_checkpoints, n_entries) at
    ``history_steps``; ``losses``: the denoising loss per step; ``val_similarity``: mean similarity of
    the validation images at each checkpoint; ``pseudo_token``: the renormalised full mixture (d,).
    ``embeddings`` (n, d), ``target_norm`` and ``pseudo_token`` are in the family's first text encoder;
    a family with several (SDXL, SD3, Flux) also has ``encoder`` (that first encoder's label) and
    ``more_embeddings``/``more_norms`` ({label: (n, d_e)}, {label: norm}) for the others; ``tokens()``
    gives the pseudo-token in every encoder."""

    concept: str
    template: str
    entries: list[Entry]
    scores: np.ndarray
    alphas: np.ndarray
    k: int
    target_norm: float
    pseudo_token: np.ndarray
    best_step: int
    history_steps: list[int]
    alpha_history: np.ndarray
    val_similarity: list[float]
    losses: list[float]
    embeddings: np.ndarray
    params: dict = field(default_factory=dict)
    encoder: str = ""
    more_embeddings: dict = field(default_factory=dict)
    more_norms: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.entries]

    def top(self, k: int | None = None) -> list[tuple[str, float]]:
        """The ``k`` (default ``self.k``) largest coefficients as (label, α), largest first."""
        k = self.k if k is None else int(k)
        order = np.argsort(-self.alphas, kind="stable")[:k]
        return [(self.entries[i].label, float(self.alphas[i])) for i in order]

    def weight(self, label: str) -> float:
        """α of the entry ``label`` (a word, or ``word[piece]``)."""
        return float(self.alphas[self.index(label)])

    def index(self, label: str) -> int:
        labels = self.labels
        if label not in labels:
            raise KeyError(f"{label!r} is not in the dictionary; entries are: {', '.join(labels)}")
        return labels.index(label)

    def table(self, k: int | None = None):
        """pandas table of the top tokens: rank, token, α, share of the top-k's total α, dictionary score."""
        import pandas as pd

        rows = self.top(k)
        tot = sum(a for _, a in rows) or 1.0
        return pd.DataFrame([{"rank": r + 1, "token": lab, "alpha": a, "share": a / tot,
                              "dictionary score": float(self.scores[self.index(lab)])}
                             for r, (lab, a) in enumerate(rows)])

    def token(self, alphas=None, top_k: int | None = None) -> torch.Tensor:
        """The renormalised pseudo-token (d,) for ``alphas`` (default the learned ones), optionally
        from the ``top_k`` largest only."""
        a = torch.as_tensor(self.alphas if alphas is None else np.asarray(alphas, np.float64), dtype=torch.float32)
        return pseudo_token(a, torch.as_tensor(self.embeddings, dtype=torch.float32), self.target_norm, top_k)

    def tokens(self, alphas=None, top_k: int | None = None):
        """The pseudo-token in every text encoder: {encoder label: (d_e,)} for a family with several
        (the same α, each encoder's own embeddings and norm), else the tensor (d,) of :meth:`token`."""
        if not self.more_embeddings:
            return self.token(alphas, top_k)
        a = torch.as_tensor(self.alphas if alphas is None else np.asarray(alphas, np.float64), dtype=torch.float32)
        emb = {self.encoder: self.embeddings, **self.more_embeddings}
        norms = {self.encoder: self.target_norm, **self.more_norms}
        return pseudo_tokens(a, {k: torch.as_tensor(v, dtype=torch.float32) for k, v in emb.items()}, norms, top_k)

    def condition(self, model, alphas=None, top_k: int | None = None):
        """The template's condition with this pseudo-token (batch 1): SD's hidden states (1, L, D), or
        another family's :class:`~nbhelpers.families.Condition` (pseudo-token in every encoder)."""
        toks = self.tokens(alphas, top_k)
        toks = {k: v.to(model.device) for k, v in toks.items()} if isinstance(toks, dict) else toks.to(model.device)
        with torch.no_grad():
            return encode_with_token(model, toks, self.template)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items()}
        d["entries"] = [asdict(e) for e in self.entries]
        for k in ("scores", "alphas", "pseudo_token", "alpha_history", "embeddings"):
            d[k] = np.asarray(d[k]).tolist()
        d["more_embeddings"] = {k: np.asarray(v).tolist() for k, v in self.more_embeddings.items()}
        d["top"] = self.top()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Decomposition":
        d = dict(d)
        d.pop("top", None)
        d["entries"] = [Entry(**e) for e in d["entries"]]
        for k in ("scores", "alphas", "alpha_history", "embeddings"):
            d[k] = np.asarray(d[k], np.float64)
        d["pseudo_token"] = np.asarray(d["pseudo_token"], np.float32)
        d["more_embeddings"] = {k: np.asarray(v, np.float64) for k, v in d.get("more_embeddings", {}).items()}
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "Decomposition":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        top = ", ".join(f"{lab} {a:.3g}" for lab, a in self.top())
        return f"Decomposition({self.concept!r}: {top}; best step {self.best_step})"


# --- learning -------------------------------------------------------------------------------------------
@validated
def decompose(model, concept: str, config: ConceptorConfig | None = None, *, template: str | None = None,
              vocabulary: Sequence[str] | None = None, scorer="auto", dictionary_size: int = 5000,
              exclude_concept: bool = True, exclude: Sequence[str] = (), multi_token: str = "pieces",
              similarity: Callable = pixel_similarity, images: np.ndarray | None = None,
              val_images: np.ndarray | None = None, progress: bool = True, **settings) -> Decomposition:
    """Learn the concept's decomposition (see the module docstring).

    ``config``: the training hyper-parameters (:class:`ConceptorConfig`: ``k``, ``steps``, ``lr``,
    ``batch_size``, ``sparsity``, ``eval_every``, ``hidden``, ``standardise``, ``n_train``, ``n_val``,
    ``seed``, ``gen_steps``, ``guidance``; default ``ConceptorConfig()``); any of them may also be given
    as a keyword (``decompose(m, "nurse", k=5, steps=150)``), which overrides the config's value.
    Training images use seeds ``seed .. seed+n_train-1``, validation ones ``seed+100000+j``;
    ``images``/``val_images`` pass precomputed ones for those seeds. ``template``: the prompt, ``{}``
    where the concept goes (default :data:`DEFAULT_TEMPLATE`). ``vocabulary``: the words the model
    knows (default: the tokenizer's whole-word tokens); when given, every word of ``concept`` must be
    one of them (else a ValueError listing them) and the dictionary's candidates are its words.
    ``scorer``/``dictionary_size``/``exclude_concept``/``exclude``/``multi_token``: the dictionary
    (:func:`build_dictionary`); ``similarity``: the validation images' measure (best step). Same
    arguments, same result (on CPU)."""
    config = (config or ConceptorConfig()).replace(**settings)
    return _decompose(model, concept, config, template, vocabulary, scorer, dictionary_size, exclude_concept,
                      tuple(exclude), multi_token, similarity, images, val_images, progress)


def decompose_many(model, concepts: Sequence[str], executor="local", **settings) -> dict[str, "Decomposition"]:
    """:func:`decompose` for each of ``concepts`` (same ``settings``), one concept per shard on any executor
    ("local", "ray" or a :class:`nbhelpers.executors.RayExecutor`; each worker loads the model once): the same
    decompositions as one call per concept here. Returns {concept: Decomposition}."""
    from .executors import map_calls

    concepts = list(concepts)
    if not concepts or not all(isinstance(c, str) and c.strip() for c in concepts):
        raise ArgumentError(f"concepts={concepts!r}: give a list of concept words, e.g. ['nurse', 'lawyer']")
    results = map_calls(model, decompose, [dict(concept=c, progress=False, **settings) for c in concepts],
                        executor=executor, desc="conceptor")
    return dict(zip(concepts, results))


@cached("conceptor")
def _decompose(model, concept: str, config: ConceptorConfig, template, vocabulary, scorer, dictionary_size: int,
               exclude_concept: bool, exclude: tuple, multi_token: str, similarity: Callable, images, val_images,
               progress: bool) -> Decomposition:
    c = config
    template = check_template(template)
    _check_concept(model, concept, template, vocabulary)
    train_seeds = list(range(c.seed, c.seed + c.n_train))
    val_seeds = [c.seed + VAL_SEED_OFFSET + j for j in range(c.n_val)]
    if images is None:
        images = concept_images(model, concept, train_seeds, template, c.gen_steps, c.guidance)
    if val_images is None:
        val_images = concept_images(model, concept, val_seeds, template, c.gen_steps, c.guidance)
    if len(images) != c.n_train or len(val_images) != c.n_val:
        raise ArgumentError(f"got {len(images)} training and {len(val_images)} validation images for "
                         f"n_train={c.n_train}, n_val={c.n_val}")
    latents = model.encode_image(images).cpu()  # precomputed once: the VAE never runs in the loop
    dic = build_dictionary(model, concept, images, latents, vocabulary, scorer, dictionary_size, exclude_concept,
                           exclude, multi_token, template, c.seed)
    n = len(dic.entries)
    if c.k > n:
        raise ArgumentError(f"k={c.k} is larger than the dictionary ({n} entries: "
                         f"{', '.join(e.label for e in dic.entries)}); use k ≤ {n}")

    def validate(token: torch.Tensor) -> float:
        """Mean similarity of the pseudo-token's validation images to the concept's own (same seeds)."""
        with torch.no_grad():
            cond = encode_with_token(model, token, template)
        gen = generate_from_condition(model, cond, val_seeds, c.gen_steps, c.guidance)
        return float(np.mean([similarity(p, q) for p, q in zip(gen, val_images)]))

    run = train_mixture(model, *dic.spaces(), latents, template, c, validate, progress, desc=f"Conceptor '{concept}'")
    a_t = torch.as_tensor(run.best_alphas, dtype=torch.float32)
    tok_best = pseudo_token(a_t, dic.embeddings, dic.target_norm)
    params = dict(k=c.k, steps=c.steps, n_train=c.n_train, n_val=c.n_val, seed=c.seed, lr=c.lr,
                  batch_size=c.batch_size, sparsity=c.sparsity, eval_every=c.eval_every, gen_steps=c.gen_steps,
                  guidance=c.guidance, scorer=dic.scorer, dictionary_size=dictionary_size,
                  exclude_concept=exclude_concept, exclude=list(exclude), multi_token=multi_token, hidden=c.hidden,
                  standardise=c.standardise, similarity=getattr(similarity, "__name__", "custom"),
                  train_seeds=train_seeds, val_seeds=val_seeds, model=getattr(model, "name", "?"))
    if dic.more_embeddings:  # a family with several text encoders (see the module docstring)
        params.update(encoders=[dic.encoder, *dic.more_embeddings], averaged_pieces=dic.averaged)
    return Decomposition(concept, template, dic.entries, dic.scores, run.best_alphas, int(c.k), dic.target_norm,
                         tok_best.detach().numpy().astype(np.float32), run.best_step, run.history_steps,
                         run.alpha_history, run.val_similarity, run.losses, dic.embeddings.double().numpy(), params,
                         dic.encoder, {k: v.double().numpy() for k, v in dic.more_embeddings.items()},
                         dict(dic.more_norms))


# --- using a decomposition -------------------------------------------------------------------------------
@validated(rules={"seeds": seed_list})
def mix_images(model, dec: Decomposition, seeds, top_k: int | None = None, alphas=None, steps: int | None = None,
               guidance: float | None = None) -> np.ndarray:
    """Images (N, H, W, 3) from the pseudo-token (all entries, or the ``top_k`` largest), one per seed."""
    p = dec.params
    return generate_from_condition(model, dec.condition(model, alphas, top_k), seeds,
                                   steps or p.get("gen_steps", 25), guidance or p.get("guidance", 3.0))


@validated(rules={"seeds": seed_list})
def manipulate(model, dec: Decomposition, token: str, scale: float, seeds=0, top_k: int | None = None,
               steps: int | None = None, guidance: float | None = None) -> np.ndarray:
    """Images with ``token``'s coefficient multiplied by ``scale`` (0 removes it), same seeds, same
    everything else (renormalised as always)."""
    a = np.array(dec.alphas, np.float64)
    a[dec.index(token)] *= float(scale)
    if top_k is not None:  # restrict to the top-k of the *learned* weights so that the token stays in
        keep = np.argsort(-dec.alphas, kind="stable")[:top_k]
        mask = np.zeros_like(a, bool)
        mask[keep] = True
        mask[dec.index(token)] = True
        a = np.where(mask, a, 0.0)
    return mix_images(model, dec, seeds, None, a, steps, guidance)


@dataclass
class SingleImageDecomposition:
    """The few tokens that keep one seed's image: ``tokens`` with their α, the image from the full
    mixture (``reference``), from the kept tokens (``image``), and the similarity after each removal."""

    seed: int
    tokens: list[tuple[str, float]]
    removed: list[str]
    trace: list[float]
    reference: np.ndarray
    image: np.ndarray
    threshold: float

    def to_dict(self) -> dict:
        return {"seed": self.seed, "tokens": self.tokens, "removed": self.removed, "trace": self.trace,
                "threshold": self.threshold}


@validated
def single_image_decomposition(model, dec: Decomposition, seed: int = 0, start: int = 10, threshold: float = 0.9,
                               min_tokens: int = 1, similarity: Callable = pixel_similarity,
                               steps: int | None = None, guidance: float | None = None) -> SingleImageDecomposition:
    """Greedy pruning (the paper's single-image decomposition): start from the ``start`` largest
    coefficients; the reference is the image of ``seed`` from that mixture. Each round regenerates the
    seed without each remaining token (all candidates in one batch) and drops the token whose removal
    keeps the image most similar, while that similarity stays ≥ ``threshold``."""
    steps = steps or dec.params.get("gen_steps", 25)
    guidance = guidance or dec.params.get("guidance", 3.0)
    order = [int(i) for i in np.argsort(-dec.alphas, kind="stable")[: max(1, min(start, len(dec.alphas)))]]

    def conds(sets):
        toks = []
        for s in sets:
            a = np.zeros_like(dec.alphas)
            a[s] = dec.alphas[s]
            toks.append(dec.tokens(a))
        stacked = ({k: torch.stack([t[k] for t in toks]).to(model.device) for k in toks[0]}
                   if isinstance(toks[0], dict) else torch.stack(toks).to(model.device))
        with torch.no_grad():
            return encode_with_token(model, stacked, dec.template)

    ref = generate_from_condition(model, conds([order]), [seed], steps, guidance)[0]
    kept, removed, trace, image = list(order), [], [], ref
    while len(kept) > min_tokens:
        cands = [[j for j in kept if j != i] for i in kept]
        imgs = generate_from_condition(model, conds(cands), [seed] * len(cands), steps, guidance)
        sims = [similarity(im, ref) for im in imgs]
        b = int(np.argmax(sims))
        if sims[b] < threshold:
            break
        removed.append(dec.entries[kept[b]].label)
        trace.append(float(sims[b]))
        image = imgs[b]
        kept = cands[b]
    return SingleImageDecomposition(int(seed), [(dec.entries[i].label, float(dec.alphas[i])) for i in kept], removed,
                                    trace, ref, image, float(threshold))
