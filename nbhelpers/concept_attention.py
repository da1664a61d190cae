"""ConceptAttention (Helbling et al., ICML 2025): saliency maps of free-form concepts from the
attention-*output* space of multi-modal diffusion transformers (SD3/3.5 and Flux.1 dev/schnell).

The idea. In an MMDiT every joint-attention layer mixes image tokens and prompt tokens in one
softmax, each stream with its own weights. ConceptAttention adds a third set of tokens, one (or a
few) per *concept* word ("cat", "sky", "background"), and carries them through the joint-attention
blocks with the **text stream's weights** of each block, with one-directional attention:

- image and prompt tokens never attend to concept tokens, so the image (and the prompt's stream) is
  exactly what it would be without them: the network's output is unchanged;
- concept tokens attend to the image tokens and to each other (not to the prompt), as in the paper;
- between layers the concept tokens follow the text stream's residual path: ``norm1_context``
  (adaLN-Zero with the block's own time/pooled embedding ``temb``), ``add_q/k/v_proj`` and
  ``norm_added_q/k``, ``to_add_out``, the gated residual, ``norm2_context`` and ``ff_context``.

The saliency of concept c at image token i in layer ℓ is ``softmax_c(o_x[i] · o_c)``, the dot
product of the two *attention outputs* (not attention weights), softmaxed over the concepts; maps
are averaged over the chosen layers and noise levels and upsampled (bilinear, as the cross-attention
maps of :mod:`nbhelpers.attention`) from the token grid to the latent grid (h, w). A softmax map
sums to 1 over the concepts at every pixel. Three spaces (``space=``):

- ``"output"`` (default): the layer's attention outputs, heads concatenated, *before* the output
  projections (the paper's ``o_x``, ``o_c``; the reference SD3 port reads these);
- ``"projected"``: after the output projections (``to_out`` for the image, ``to_add_out`` for the
  concepts; the reference diffusers Flux port reads these). SD3's last block has no ``to_add_out``
  (``context_pre_only``), so it is not available there;
- ``"cross_attention"``: the DAAM-style comparison, the image queries against the concept keys,
  ``softmax_c(q_x · k̄_c / √d)`` per head then averaged over heads (k̄_c: the scaled logits averaged
  over the concept's tokens).

Which tokens a concept is. A concept is encoded alone, as a prompt, by the family's own text
encoding (:meth:`DiffusionModel.condition`), and its tokens are the rows of the denoiser's text
sequence at the concept's word tokens (``model.word_positions``; start, end and padding tokens
dropped), passed through the denoiser's ``context_embedder`` as the prompt is. Flux: its T5 tokens
(the only encoder the joint attention sees; CLIP is pooled only). SD3/3.5: the same joint text
sequence as a prompt, so a word contributes its CLIP-L‖OpenCLIP-G column *and* its T5 tokens (each
carried as a token; the encoders of SD3 are laid side by side in one sequence and a prompt word's
cross-attention map in this suite uses the same columns). A concept's score is the mean of the dot
products over its tokens (= the dot product with its tokens' mean output). Concept tokens get the
prompt's ``temb`` and, in Flux, the text tokens' rotary position (ids 0: the identity rotation).

Layers. Only the *joint* (double-stream) blocks carry concepts: SD3's ``transformer_blocks`` and
Flux's ``transformer_blocks`` (Flux's single-stream blocks share one set of weights for text and
image, so there is no text stream to use; the paper reads the double-stream blocks too). By default
the later half of the joint blocks (the paper's defaults are late double-stream layers).

Mechanism. Torch forward hooks only (:func:`nbhelpers.hooks.module_hooks`), nothing assigned to a
library object: a pre-hook on the denoiser starts the concept stream from the concept embeddings; a
pre-hook on each joint block reads its inputs; a pre-/forward hook on the attention's ``to_out[0]``
reads the image attention output; a forward hook on the block computes the concept tokens' attention
and residual update with the block's own modules, after the block has run. The hooks return None, so
the network's computation is untouched. Every hook is removed on exit, also after an error.

Its localisation score against exact masks comes with the DiT world model (issue 17).
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .validate import ArgumentError, choice, real, validated

SPACES = ("output", "projected", "cross_attention")
SUPPORTED = "Stable Diffusion 3/3.5 ('sd3') and Flux.1 dev/schnell ('flux')"


# --- which model, which layers --------------------------------------------------------------------------
def joint_blocks(model) -> list[torch.nn.Module]:
    """The joint-attention (double-stream) blocks of an MMDiT ``model``, in order: SD3's and Flux's
    ``transformer_blocks``. Raises :class:`ArgumentError` for a model without joint attention."""
    family = getattr(model, "family", None)
    if family is None or not family.joint_attention:
        what = f"{getattr(model, 'name', '') or type(model).__name__!r}" + (f" ({family.title})" if family else "")
        raise ArgumentError(
            f"ConceptAttention needs a multi-modal diffusion transformer with joint attention over image and text "
            f"tokens; {what} has none (its text enters through cross-attention). Supported: {SUPPORTED}. For this "
            "model use nbhelpers.attention.word_attention_maps (cross-attention) or the CMI maps of nbhelpers.info")
    blocks = list(getattr(model.denoiser, "transformer_blocks", []))
    if not blocks or any(getattr(b.attn, "added_kv_proj_dim", None) is None for b in blocks):
        raise ArgumentError(f"{type(model.denoiser).__name__} has no joint-attention blocks with a text stream "
                            "(transformer_blocks[i].attn.add_q_proj); ConceptAttention supports " + SUPPORTED)
    for i, b in enumerate(blocks):
        if getattr(b.attn, "fused_projections", False):
            raise ArgumentError(f"transformer_blocks.{i}.attn has fused q/k/v projections; ConceptAttention reads the "
                                "separate ones: call model.denoiser.unfuse_qkv_projections() first")
    return blocks


def _has_text_output(block) -> bool:
    """Whether the block projects its text stream's attention output (SD3's last block does not)."""
    return getattr(block.attn, "to_add_out", None) is not None and not getattr(block, "context_pre_only", False)


def default_layers(model, space: str = "output") -> list[int]:
    """The later half of the joint blocks (indices into ``transformer_blocks``); for
    ``space="projected"`` without blocks that have no text output projection."""
    blocks = joint_blocks(model)
    chosen = list(range(len(blocks) // 2, len(blocks)))
    if space == "projected":
        chosen = [i for i in chosen if _has_text_output(blocks[i])] or \
                 [i for i in range(len(blocks)) if _has_text_output(blocks[i])][-1:]
    return chosen


def _check_layers(model, layers, space: str) -> list[int]:
    blocks = joint_blocks(model)
    if layers is None:
        return default_layers(model, space)
    items = [layers] if isinstance(layers, (int, np.integer)) else list(layers)
    if not items:
        raise ArgumentError(f"layers=[] is empty; give joint-block indices 0..{len(blocks) - 1}, or layers=None "
                            f"(the later half: {default_layers(model, space)})")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not -len(blocks) <= int(v) < len(blocks):
            raise ArgumentError(f"layers contains {v!r}; {type(model.denoiser).__name__} has {len(blocks)} joint "
                                f"blocks: give indices 0..{len(blocks) - 1} (negative ones count from the end)")
        i = int(v) % len(blocks)
        if space == "projected" and not _has_text_output(blocks[i]):
            raise ArgumentError(f"layers contains {v!r}, but transformer_blocks.{i} has no text output projection "
                                "(context_pre_only): use space='output' there, or another layer")
        out.append(i)
    return sorted(set(out))


# --- concept tokens ------------------------------------------------------------------------------------
@dataclass
class ConceptTokens:
    """Concept tokens in the denoiser's text *input* space (before ``context_embedder``).

    ``embeds``: (K, D_text) float, K tokens in all; ``names``: one per concept; ``groups``: for each
    concept the rows of ``embeds`` that are its tokens (a concept's score is the mean over them)."""

    names: list[str]
    embeds: torch.Tensor
    groups: list[list[int]]

    def __post_init__(self):
        if self.embeds.ndim != 2:
            raise ArgumentError(f"concept embeds must be (K, D), got shape {tuple(self.embeds.shape)}")
        if len(self.names) != len(self.groups) or any(not g for g in self.groups):
            raise ArgumentError("every concept needs a name and at least one token row")
        k = self.embeds.shape[0]
        if any(not 0 <= j < k for g in self.groups for j in g):
            raise ArgumentError(f"concept token rows must lie in 0..{k - 1}, got {self.groups}")


@torch.no_grad()
def encode_concepts(model, concepts: list[str]) -> ConceptTokens:
    """Each concept through the family's own text encoding, alone; its tokens are its word tokens'
    rows of the denoiser's text sequence (see the module's docstring). Raises :class:`ArgumentError`
    for a concept the tokenizers give no word token for."""
    joint_blocks(model)
    seqs = model.condition(list(concepts)).prompt_embeds  # (C, L, D_text): each concept alone, one batch
    rows, groups, k = [], [], 0
    for c, seq in zip(concepts, seqs):
        cols = sorted({j for w in model.tokenize(c).words for j in model.word_positions(c, w.text)})
        if not cols:
            raise ArgumentError(f"concept {c!r} gives no word token in {model.name or 'this model'}'s tokenizer(s); "
                                "give a word such as 'cat' or 'background'")
        groups.append(list(range(k, k + len(cols))))
        rows.append(seq[cols].float())
        k += len(cols)
    return ConceptTokens(list(concepts), torch.cat(rows), groups)


# --- the maps -------------------------------------------------------------------------------------------
def _group_mean(scores: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """(..., K) → (..., C): the mean over each concept's token columns."""
    return torch.stack([scores[..., g].mean(-1) for g in groups], -1)


def output_space_maps(image_out: torch.Tensor, concept_out: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """ConceptAttention's per-layer map: ``softmax_c(mean_{t∈c} image_out[i] · concept_out[t])``.
    ``image_out`` (B, N, D), ``concept_out`` (B, K, D) → (B, N, C), summing to 1 over C."""
    scores = image_out.float() @ concept_out.float().transpose(1, 2)  # (B, N, K)
    return torch.softmax(_group_mean(scores, groups), dim=-1)


def cross_attention_maps(image_q: torch.Tensor, concept_k: torch.Tensor, groups: list[list[int]]) -> torch.Tensor:
    """The comparison: image queries (B, H, N, d) against concept keys (B, H, K, d), logits scaled by
    1/√d and averaged over each concept's tokens, softmax over concepts per head, mean over heads →
    (B, N, C)."""
    logits = (image_q.float() @ concept_k.float().transpose(-1, -2)) / math.sqrt(image_q.shape[-1])
    return torch.softmax(_group_mean(logits, groups), dim=-1).mean(1)


@dataclass
class ConceptRecorder:
    """What :func:`carry_concepts` records: per layer (index into the joint blocks) the sum over
    denoiser calls and batch rows of the (C, rows, cols) maps of each space, and with
    ``keep_vectors`` the raw vectors of every call (CPU, float32): ``o_x`` (B, N, D) image and
    ``o_c`` (B, K, D) concept attention outputs before the output projections, ``o_x_proj``,
    ``o_c_proj`` after them (``o_c_proj`` absent where the block has no ``to_add_out``), ``q_x``
    (B, H, N, d) image queries and ``k_c`` (B, H, K, d) concept keys."""

    groups: list[list[int]]
    grid: tuple[int, int]
    spaces: tuple[str, ...]
    keep_vectors: bool = False
    sums: dict = field(default_factory=dict)  # (space, layer) -> (C, rows, cols)
    rows: dict = field(default_factory=dict)  # (space, layer) -> batch rows added
    vectors: dict = field(default_factory=dict)  # layer -> [dict per call]

    def add(self, space: str, layer: int, maps: torch.Tensor) -> None:
        """maps: (B, N, C) with N = rows·cols image tokens in row-major order."""
        b, n, c = maps.shape
        grid = maps.detach().float().cpu().transpose(1, 2).reshape(b, c, *self.grid)
        key = (space, layer)
        self.sums[key] = self.sums.get(key, 0) + grid.sum(0)
        self.rows[key] = self.rows.get(key, 0) + b

    def layer_maps(self, space: str = "output") -> dict[int, torch.Tensor]:
        """{layer: (C, rows, cols) map averaged over calls and rows} on the token grid."""
        out = {layer: s / self.rows[(sp, layer)] for (sp, layer), s in self.sums.items() if sp == space}
        if not out:
            raise RuntimeError(f"no {space!r} maps were recorded: run the denoiser inside carry_concepts(..., "
                               f"spaces=({space!r},))")
        return dict(sorted(out.items()))

    def maps(self, space: str = "output") -> torch.Tensor:
        """(C, rows, cols): the mean over the recorded layers of :meth:`layer_maps`."""
        return torch.stack(list(self.layer_maps(space).values())).mean(0)


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, S, H·d) → (B, S, H, d)."""
    return t.unflatten(-1, (heads, t.shape[-1] // heads))


def _norm(module, t):
    return t if module is None else module(t)


def _concept_step(block, inputs: dict, c: torch.Tensor, o_x: dict, record: bool, text_first: bool, rec,
                  layer: int) -> torch.Tensor:
    """One joint block's update of the concept stream ``c`` (B, K, D) given the block's inputs (image
    stream ``hidden_states`` (B, N, D), ``temb``, Flux's ``image_rotary_emb``); records the maps of a
    chosen layer. Returns the concept stream after the block."""
    attn = block.attn
    x, temb = inputs["hidden_states"], inputs["temb"]
    n_img = x.shape[1]
    heads = attn.heads
    norm_x = block.norm1(x, emb=temb)[0]  # the block's own modulated image tokens (same as its forward)
    k_x = _norm(attn.norm_k, _split_heads(attn.to_k(norm_x), heads))  # (B, N, H, d)
    v_x = _split_heads(attn.to_v(norm_x), heads)
    pre_only = getattr(block, "context_pre_only", False) or getattr(attn, "to_add_out", None) is None
    if getattr(block, "context_pre_only", False):
        nc = block.norm1_context(c, temb)
    else:
        nc, g_msa, c_shift, c_scale, g_mlp = block.norm1_context(c, emb=temb)
    q_c = _norm(attn.norm_added_q, _split_heads(attn.add_q_proj(nc), heads))
    k_c = _norm(attn.norm_added_k, _split_heads(attn.add_k_proj(nc), heads))
    v_c = _split_heads(attn.add_v_proj(nc), heads)
    q_x = None
    rope = inputs.get("image_rotary_emb")
    need_q = record and "cross_attention" in rec.spaces
    if need_q:
        q_x = _norm(attn.norm_q, _split_heads(attn.to_q(norm_x), heads))
    if rope is not None:  # Flux: image tokens rotate by their position; text (and concept) ids are 0 → identity
        from diffusers.models.embeddings import apply_rotary_emb

        img_rope = (rope[0][-n_img:], rope[1][-n_img:])
        k_x = apply_rotary_emb(k_x, img_rope, sequence_dim=1)
        if q_x is not None:
            q_x = apply_rotary_emb(q_x, img_rope, sequence_dim=1)
    # concept queries over [image, concept] keys, in the family's order (the softmax does not depend on it)
    keys = torch.cat([k_c, k_x] if text_first else [k_x, k_c], 1).transpose(1, 2)
    values = torch.cat([v_c, v_x] if text_first else [v_x, v_c], 1).transpose(1, 2)
    o_c = F.scaled_dot_product_attention(q_c.transpose(1, 2), keys, values).transpose(1, 2).flatten(2).to(q_c.dtype)
    o_c_proj = None if pre_only else attn.to_add_out(o_c)
    if record:
        if "output" in rec.spaces:
            rec.add("output", layer, output_space_maps(o_x["raw"], o_c, rec.groups))
        if "projected" in rec.spaces and o_c_proj is not None:
            rec.add("projected", layer, output_space_maps(o_x["projected"], o_c_proj, rec.groups))
        if need_q:
            rec.add("cross_attention", layer, cross_attention_maps(q_x.transpose(1, 2), k_c.transpose(1, 2), rec.groups))
        if rec.keep_vectors:
            kept = dict(o_x=o_x["raw"], o_c=o_c, o_x_proj=o_x["projected"], o_c_proj=o_c_proj,
                        q_x=None if q_x is None else q_x.transpose(1, 2), k_c=k_c.transpose(1, 2))
            rec.vectors.setdefault(layer, []).append({k: v.detach().float().cpu() for k, v in kept.items()
                                                      if v is not None})
    if pre_only:  # the text stream ends in this block (SD3's last): nothing carries on
        return c
    c = c + g_msa.unsqueeze(1) * o_c_proj
    h = block.norm2_context(c) * (1 + c_scale[:, None]) + c_shift[:, None]
    c = c + g_mlp.unsqueeze(1) * block.ff_context(h)
    if c.dtype == torch.float16:
        c = c.clip(-65504, 65504)
    return c


@contextlib.contextmanager
def carry_concepts(model, concepts: ConceptTokens, layers=None, spaces: tuple[str, ...] = ("output",),
                   keep_vectors: bool = False):
    """Within the block, every call of ``model.denoiser`` carries ``concepts`` through its joint blocks
    (one-directional attention; the network's output is unchanged) and records the maps of the chosen
    ``layers`` (indices into the joint blocks; None: :func:`default_layers`) for each of ``spaces`` in
    the yielded :class:`ConceptRecorder` ("projected" is skipped in a block without a text output
    projection when other spaces are asked for too; asked alone, such a layer is an error). The
    concept stream is carried through every joint block up to the last chosen one. Torch hooks
    through :mod:`nbhelpers.hooks`, all removed on exit, also after an error."""
    from .hooks import module_hooks

    blocks = joint_blocks(model)
    for s in spaces:
        choice(SPACES)("spaces", s)
    chosen = _check_layers(model, layers, "projected" if spaces == ("projected",) else "output")
    text_first = model.family.joint_layout == "text_first"
    rec = ConceptRecorder(concepts.groups, model.family.token_grid(), tuple(spaces), keep_vectors)
    den = model.denoiser
    state: dict = {}

    def start(module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        emb = den.context_embedder
        c = emb(concepts.embeds.to(x.device, emb.weight.dtype))  # (K, D), as the prompt enters the blocks
        state.clear()
        state["c"] = c.unsqueeze(0).expand(x.shape[0], *c.shape).contiguous()

    def block_pre(block):
        sig = inspect.signature(block.forward)

        def pre(module, args, kwargs):
            bound = sig.bind(*args, **kwargs)
            state["inputs"] = dict(bound.arguments)
            state["o_x"] = {}
        return pre

    def block_post(i, block):
        def post(module, args, kwargs, output):
            if "c" not in state:
                raise RuntimeError("a joint block ran outside a denoiser call; call model.denoiser (or model.eps) "
                                   "inside carry_concepts")
            state["c"] = _concept_step(block, state["inputs"], state["c"], state["o_x"], i in chosen, text_first,
                                       rec, i)
        return post

    def out_pre(module, args):
        state["o_x"]["raw"] = args[0]

    def out_post(module, args, output):
        state["o_x"]["projected"] = output

    with contextlib.ExitStack() as stack:
        stack.enter_context(module_hooks(den, forward_pre=start, with_kwargs=True))
        for i, block in enumerate(blocks[: max(chosen) + 1]):
            stack.enter_context(module_hooks(block, forward_pre=block_pre(block), forward=block_post(i, block),
                                             with_kwargs=True))
            if i in chosen:
                stack.enter_context(module_hooks(block.attn.to_out[0], forward_pre=out_pre, forward=out_post))
        yield rec


# --- the public function ----------------------------------------------------------------------------------
def _logsnr_rule(name, value):
    if isinstance(value, (list, tuple)):
        if not value:
            raise ArgumentError(f"{name}=[] is empty; give one or more log-SNRs, e.g. {name}=[0.0], or None")
        return [real(f"{name}[{i}]", v, hint="a log-SNR in nats, e.g. 0.0") for i, v in enumerate(value)]
    return real(name, value, hint="a log-SNR in nats, e.g. 0.0 (t = 0.5 for flow matching)")


@validated(rules={"space": choice(SPACES), "logsnr": _logsnr_rule})
@torch.no_grad()
def concept_attention_maps(model, image, concepts: list[str], prompt: str | None = None, n: int = 8, seed: int = 0,
                           layers=None, logsnr=None, space: str = "output", sampler=None) -> dict[str, np.ndarray]:
    """ConceptAttention saliency map (h, w) of each concept for a given image, on an MMDiT (SD3/3.5, Flux).

    The denoiser runs on ``n`` noisy versions of the image's latent (one batch), conditioned on
    ``prompt`` (None: the family's null condition), with the concept tokens carried alongside (see
    the module's docstring). Noise levels: ``logsnr=None`` draws them like
    :func:`nbhelpers.attention.word_attention_maps` (stratified from the model's trained log-SNR
    range); a float (nats) or a list of floats fixes them (the paper uses a few steps at one level;
    a list is cycled over the ``n`` samples). ``layers``: joint-block indices (None: the later half).
    ``space``: "output" (attention outputs, default), "projected" (after the output projections) or
    "cross_attention" (image queries × concept keys).

    Returns {concept: float32 array (h, w)} on the latent grid; for every space the maps sum to 1
    over the concepts at each pixel (softmax over concepts, averaged over layers, noise levels and
    heads). Raises :class:`ArgumentError` for a model without joint attention (SD 1.x/2.x, SDXL,
    PixArt), naming the supported families."""
    from .immse import LogSNRSampler, noisy_copies

    joint_blocks(model)
    chosen = _check_layers(model, layers, space)
    tokens = encode_concepts(model, concepts)
    x = model.latent_of(image)
    levels = None
    if logsnr is not None:
        levels = logsnr if isinstance(logsnr, list) else [logsnr]
        if len(levels) > n:
            raise ArgumentError(f"logsnr has {len(levels)} levels but n={n} samples; give n >= {len(levels)} "
                                "(the levels are cycled over the samples)")
        levels = [levels[i % len(levels)] for i in range(n)]
    z, a = noisy_copies(x, n, seed, sampler or LogSNRSampler.for_model(model), levels)
    cond = model.condition(prompt) if prompt is not None else None
    with carry_concepts(model, tokens, chosen, spaces=(space,)) as rec:
        model.eps(z, a, cond)
    maps = rec.maps(space)  # (C, rows, cols)
    hw = tuple(model.latent_shape[1:])
    if tuple(maps.shape[-2:]) != hw:
        maps = F.interpolate(maps[None], size=hw, mode="bilinear", align_corners=False)[0]
    return {c: maps[i].numpy().astype(np.float32) for i, c in enumerate(concepts)}
