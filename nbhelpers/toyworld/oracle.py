"""The toy world's exact denoiser ("toy-oracle"): every information estimate on a world image has an exact answer.

The world (``world.py``) is finite apart from its position jitter, and its caption process (``train.py``)
is known exactly. :class:`WorldDenoiser` discretises the jitter, takes every picture the world can draw,
embeds it with the bundled toy model's VAE (``encode_image``: posterior mean × scaling factor, 4×16×16)
and is the Bayes-optimal (posterior-mean) denoiser of that finite set of latents,
:class:`nbhelpers.closed_form.DiscreteDenoiser`. A condition is the log posterior over the pictures
given a prompt, so for a support picture x

    i(x; strong | weak) = log p(x | strong) − log p(x | weak)        (nats, :meth:`exact_information`)

which is what ``nbhelpers.info.mutual_information`` / ``conditional_mutual_information`` estimate when
they are given the oracle in place of a ``DiffusionModel`` (same prompt interface: ``tokenize``,
``remove_word``, ``encode_text``/``condition``, ``null_condition``, ``encode_image``, ``decode``).

**Support** (the scenes, with the world's own probabilities):

- scene kinds at ``KIND_RATES``; colours, shapes, sizes, positions, relations uniform; subject nouns
  uniform with their planted ``P_WARM``/``P_BIG``; a bat a triangle at the top and a square at the bottom.
- ``split="all"`` (default): the whole world, held-out compositions included (it is "the world");
  ``split="train"``: the training distribution (held-out compositions removed, the rest renormalised).
- Jitter. Lone objects (single, subject, homonym): the uniform ±1.5 px jitter of the centre becomes a
  uniform choice among the centres of a ``jitter_grid`` × ``jitter_grid`` grid of equal cells
  (default 3: offsets −1, 0, +1 px on each axis). Pairs: one position, the centre of their jitter range
  (0.5 px outward along the relation's axis, 0 across); jittered pairs would multiply the support by
  36 (65 k latents of 1024 numbers) for no change in any caption's information.
- Pictures, not scenes, are the support: scenes that draw the same picture are merged (a "warm nurse"
  is drawn as a red circle; a bat at the top is a triangle at the top; "A left of B" is "B right of A").
  Default support: 1350 lone pictures + 1800 pair pictures = 3150 latents.

Because no caption depends on the jitter, the information of a caption (or of a word given the rest)
does not depend on the grid: the grid only sets how close the support's latents are.

**Captions** (exactly ``train.denoising_loss``): with probability ``P_EMPTY`` (0.1) the caption is empty;
otherwise each optional word group (``Scene.optional_groups``: size, colour, noun, position phrase,
relation) is dropped independently (nouns with ``P_NOUN`` = 0.1, the others ``P_WORD`` = 0.25, the
defaults of ``world.random_drop``), and red is written "red", "crimson" or "crimson red" at
``RED_WORDING_RATES``. ``caption_likelihood`` parses a prompt into the caption templates (every parse,
summed) and gives p(prompt | composition) for every composition at once. The empty prompt gives the prior
(the null condition). A prompt no scene can produce (e.g. "a big red circle on the": a position phrase is
dropped as a whole; remove "on the left", not "left") raises :class:`~nbhelpers.errors.PromptError`.
Prompts are read as their words (``nbhelpers.text``'s word pattern, lower case): punctuation is ignored,
and so is the "replace" removal policy's neutral "_", which makes that policy the same as "delete" here.

**Where the information lies, and the estimator's default range.** The support's latents are far apart
(even pictures 1 px apart), so above log-SNR α ≈ -1 every posterior has settled on the true picture and
the MMSE gaps vanish: all information is carried between α ≈ -16 and -1. The estimator's default range
is the toy model's trained one, -5.36 … 7.07, so it misses everything below -5.36. Measured on the
big red circle on the left (n = 8192, standard form; ``tests/test_oracle.py``):

==========================  ==============  ===================  ============  ==========
term                        exact           default range        below -5.36   bias
==========================  ==============  ===================  ============  ==========
i(x; caption)               5.051 (ln 156)  3.80 ± 0.10          1.05 ± 0.05   -21 %
i(x; red | rest)            1.609 (ln 5)    1.20 ± 0.06          0.357         -22 %
i(x; big | rest)            0.693 (ln 2)    0.55 ± 0.05          0.18 ± 0.01   -26 %
i(x; circle | rest)         1.099 (ln 3)    0.90 ± 0.04          0.121         -11 %
i(x; on the left | rest)    1.609 (ln 5)    0.85 ± 0.06          0.71 ± 0.03   -44 %
==========================  ==============  ===================  ============  ==========

With a sampler over [-16, 8] (``LogSNRSampler(-4, 1, 12)``) the estimates match the exact values
(1.626 ± 0.035 for ln 5, 5.108 ± 0.074 for 5.051 at n = 8192). Where the information lies is a property
of this discretised world in this latent space, not necessarily of the trained model.

Building: the support latents are encoded once (≈ 10 s on two CPU cores) and cached as safetensors under
``nbhelpers.cache.cache_dir()/oracle``, keyed by a hash of the VAE's weights, the world's drawing code and
the support's settings; a cached build takes about a second beyond loading the toy model. This cache
holds no results (only the VAE's encodings of the world's pictures, keyed by their content), so it is
used even when the result cache is off (``NBHELPERS_CACHE=0``); ``cache=False`` skips it.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..closed_form import DiscreteDenoiser
from ..errors import ImageFormatError, PromptError
from ..text import WORD_RE
from . import train, world

# The caption process of training, read from the code that draws it (so they cannot drift apart).
P_WORD = float(inspect.signature(world.random_drop).parameters["p_word"].default)  # size, colour, position, relation
P_NOUN = float(inspect.signature(world.random_drop).parameters["p_noun"].default)
P_EMPTY = float(inspect.signature(train.denoising_loss).parameters["p_empty"].default)

CACHE_VERSION = 1
SPLITS = ("all", "train")


@dataclass(frozen=True)
class Composition:
    """A scene up to its jitter: ``scene`` (objects at their canonical centres, pairs at their single
    support position) and its prior probability in the world."""

    scene: world.Scene
    prior: float

    @property
    def kind(self) -> str:
        return self.scene.kind


# --- the world's scenes ---------------------------------------------------------------------------
def _pair_objects(rel: str, attrs) -> tuple[world.WorldObject, ...]:
    objs = []
    for off, (c, s, z) in zip(world.RELATIONS[rel], attrs):
        out = 0.5 * world.PAIR_OUTWARD_JITTER  # the centre of the outward jitter's range
        dx = off[0] + (np.sign(off[0]) * out if off[0] else 0.0)
        dy = off[1] + (np.sign(off[1]) * out if off[1] else 0.0)
        objs.append(world.WorldObject(c, s, z, 16 + dx, 16 + dy, s, None, None))
    return tuple(objs)


def compositions(split: str = "all", kinds=None) -> list[Composition]:
    """Every composition of the world with its prior (summing to 1 over ``kinds``, default all)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    kinds = tuple(world.KIND_RATES) if kinds is None else tuple(kinds)
    for k in kinds:
        if k not in world.KIND_RATES:
            raise ValueError(f"unknown scene kind {k!r}; choose from {tuple(world.KIND_RATES)}")
    C, S, Z, P = list(world.COLOURS), list(world.SHAPES), list(world.SIZES), list(world.POSITIONS)
    out: list[Composition] = []

    def lone(kind, colour, shape, size, pos, noun=None, colour_word=None):
        cx, cy = world.POSITIONS[pos]
        return world.Scene(kind, (world.WorldObject(colour, shape, size, cx, cy, noun or shape, pos, colour_word),))

    if "single" in kinds:
        p = world.KIND_RATES["single"] / (len(C) * len(S) * len(Z) * len(P))
        out += [Composition(lone("single", c, s, z, pos), p) for c, s, z, pos in itertools.product(C, S, Z, P)]
    if "pair" in kinds:
        objs = list(itertools.product(C, S, Z))
        p = world.KIND_RATES["pair"] / (len(world.RELATIONS) * len(objs) ** 2)
        out += [Composition(world.Scene("pair", _pair_objects(rel, (a, b)), rel), p)
                for rel in world.RELATIONS for a in objs for b in objs]
    if "subject" in kinds:
        for noun, shape in world.SUBJECT_SHAPES.items():
            for group, pg in (("warm", world.P_WARM[noun]), ("cool", 1 - world.P_WARM[noun])):
                for size, pz in (("big", world.P_BIG[noun]), ("small", 1 - world.P_BIG[noun])):
                    p = world.KIND_RATES["subject"] / len(world.SUBJECT_SHAPES) * pg * pz / len(P)
                    out += [Composition(lone("subject", world.GROUP_COLOURS[group], shape, size, pos, noun, group), p)
                            for pos in P]
    if "homonym" in kinds:
        p = world.KIND_RATES["homonym"] / (len(world.HOMONYM_SHAPE) * len(C) * len(Z))
        out += [Composition(lone("homonym", c, shape, z, pos, world.HOMONYM), p)
                for pos, shape in world.HOMONYM_SHAPE.items() for c in C for z in Z]
    if split == "train":
        out = [c for c in out if not world.is_held_out(c.scene)]
    total = sum(c.prior for c in out)
    return [Composition(c.scene, c.prior / total) for c in out]


def jitter_offsets(grid: int) -> np.ndarray:
    """Centres of ``grid`` equal cells of the jitter range [−JITTER, JITTER] (pixels)."""
    if not isinstance(grid, (int, np.integer)) or grid < 1:
        raise ValueError(f"jitter_grid must be a positive whole number, not {grid!r}")
    return -world.JITTER + (np.arange(grid) + 0.5) * (2 * world.JITTER / grid)


def picture_key(scene: world.Scene) -> tuple:
    """What the picture of a scene depends on (objects never overlap, so their order does not matter)."""
    return tuple(sorted((o.colour, o.shape, o.size, round(float(o.cx), 6), round(float(o.cy), 6))
                        for o in scene.objects))


# --- the caption process -------------------------------------------------------------------------
def _colour_forms(o: world.WorldObject) -> dict[str, float]:
    """How an object's colour group is written, with probabilities (given the group is not dropped)."""
    if o.colour_word in world.GROUP_COLOURS:  # subjects: "warm" / "cool"
        return {o.colour_word: 1.0}
    if o.colour == "red":
        return dict(world.RED_WORDING_RATES)
    return {o.colour: 1.0}


def _slot_options():
    colour_forms = list(world.COLOURS) + [f for f in world.RED_WORDING_RATES if f not in world.COLOURS]
    colour_forms += list(world.GROUP_COLOURS)
    nouns = list(world.SHAPES) + [world.HOMONYM] + list(world.SUBJECT_SHAPES)

    def obj(i):
        return [(f"size{i}", {(z,): z for z in world.SIZES}),
                (f"colour{i}", {tuple(f.split()): f for f in colour_forms}),
                (f"noun{i}", {(n,): n for n in nouns})]

    article = (None, {("a",): None})
    lone = [article] + obj(0) + [("position0", {tuple(ph): pos for pos, ph in world.POSITION_PHRASES.items()})]
    pair = [article] + obj(0) + [("relation", {tuple(r.split()): r for r in world.RELATIONS}), article] + obj(1)
    return {"lone": lone, "pair": pair}


TEMPLATES = _slot_options()


def parses(words: list[str], template: str) -> list[dict]:
    """Every way ``words`` is a caption of ``template`` ("lone" or "pair"): group name → the written
    value (a size, colour form, noun, position or relation) or None where the group was dropped."""
    slots = TEMPLATES[template]
    found = []

    def walk(i: int, k: int, got: dict):
        if k == len(slots):
            if i == len(words):
                found.append(dict(got))
            return
        name, options = slots[k]
        if name is not None:
            walk(i, k + 1, {**got, name: None})  # the group was dropped
        for phrase, value in options.items():
            if tuple(words[i : i + len(phrase)]) == phrase:
                walk(i + len(phrase), k + 1, got if name is None else {**got, name: value})

    walk(0, 0, {})
    return found


def prompt_words(prompt: str) -> list[str]:
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be a string, got {type(prompt).__name__} ({prompt!r})")
    return [m.group().lower() for m in WORD_RE.finditer(prompt)]


class _CaptionModel:
    """p(caption | composition) for all compositions at once (vectorised over compositions)."""

    def __init__(self, comps: list[Composition]):
        n = len(comps)
        self.n = n
        self.template = np.array(["pair" if c.kind == "pair" else "lone" for c in comps])
        self.attr: dict[str, np.ndarray] = {}
        self.colour: dict[str, dict[str, np.ndarray]] = {}
        for i in (0, 1):
            objs = [c.scene.objects[i] if len(c.scene.objects) > i else None for c in comps]
            self.attr[f"size{i}"] = np.array([o.size if o else "" for o in objs])
            self.attr[f"noun{i}"] = np.array([o.noun if o else "" for o in objs])
            forms: dict[str, np.ndarray] = {}
            for j, o in enumerate(objs):
                for f, p in (_colour_forms(o) if o else {}).items():
                    forms.setdefault(f, np.zeros(n))[j] = p
            self.colour[f"colour{i}"] = forms
        self.attr["position0"] = np.array([c.scene.objects[0].position or "" for c in comps])
        self.attr["relation"] = np.array([c.scene.relation or "" for c in comps])

    def likelihood(self, prompt: str) -> np.ndarray:
        words = prompt_words(prompt)
        if not words:
            return np.full(self.n, P_EMPTY)
        total = np.zeros(self.n)
        for template in TEMPLATES:
            rows = self.template == template
            for parse in parses(words, template):
                lik = rows.astype(np.float64)
                for group, value in parse.items():
                    p_drop = P_NOUN if group.startswith("noun") else P_WORD
                    if value is None:
                        lik *= p_drop
                    elif group.startswith("colour"):
                        lik *= (1 - p_drop) * self.colour[group].get(value, 0.0)
                    else:
                        lik *= (1 - p_drop) * (self.attr[group] == value)
                total += lik
        return (1 - P_EMPTY) * total


def attribute_rate(prompt: str, attribute: str, value: str, split: str = "all", obj: int = 0) -> float:
    """The exact share of the pictures of ``prompt`` whose object ``obj`` has ``attribute`` ("size", "colour",
    "shape", "position", "noun") equal to ``value``, under the training's caption process over ``split``'s
    compositions ("all": the world; "train": what both world models were trained on, held-out compositions
    removed). E.g. ``attribute_rate("a red circle", "size", "big", "train")`` is 0.375 (the world's: 0.5)."""
    comps = compositions(split)
    if attribute not in ("size", "colour", "shape", "position", "noun"):
        raise ValueError(f"attribute {attribute!r}: choose size, colour, shape, position or noun")
    w = np.array([c.prior for c in comps]) * _CaptionModel(comps).likelihood(prompt)
    if not w.sum() > 0:
        raise PromptError(f"no scene of the toy world ({split} split) is ever captioned {prompt!r}; see data/WORLD_CARD.md")
    hit = np.array([len(c.scene.objects) > obj and getattr(c.scene.objects[obj], attribute) == value for c in comps])
    return float(w[hit].sum() / w.sum())


# --- the oracle ---------------------------------------------------------------------------------
def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class WorldDenoiser:
    """The exact (posterior-mean) denoiser of the discretised toy world in the toy model's latent space.

    Satisfies the ``Denoiser`` protocol and the prompt interface of ``DiffusionModel`` that the
    estimators use. Build it with ``load_model("toy-oracle")`` or ``WorldDenoiser(toy_model)``.

    - ``scenes[j]``, ``latents(j)``, ``image(j)``: the j-th support picture (a scene that draws it, its
      latent, its exact render); ``index_of(scene)`` the other way round.
    - ``condition(prompts)`` / ``encode_text``: (B, J) float64 log posteriors over the J pictures;
      ``null_condition()`` the log prior.
    - ``caption_likelihood(prompt)``: p(prompt | composition) for every composition (``compositions``);
      ``posterior(prompt)``: p(picture | prompt) (J,).
    - ``exact_information(j_or_scene, strong, weak="")``: log p(x_j | strong) − log p(x_j | weak), nats.
    """

    def __init__(self, toy, jitter_grid: int = 3, split: str = "all", kinds=None, cache: bool = True,
                 name: str = "toy-oracle", progress: bool = True):
        self._toy = toy  # a DiffusionModel; not ``pipe``, so the result cache never mistakes this for it
        self.name = name
        self.jitter_grid = int(jitter_grid)
        self.split = split
        self.compositions = compositions(split, kinds)
        self.kinds = tuple(dict.fromkeys(c.kind for c in self.compositions))
        self._captions = _CaptionModel(self.compositions)
        offsets = jitter_offsets(self.jitter_grid)
        keys: dict[tuple, int] = {}
        scenes: list[world.Scene] = []
        row_comp, row_img, row_w = [], [], []
        for ci, comp in enumerate(self.compositions):
            if comp.kind == "pair":
                variants = [comp.scene]
            else:
                o = comp.scene.objects[0]
                variants = [world.Scene(comp.kind, (world.WorldObject(o.colour, o.shape, o.size, o.cx + jx, o.cy + jy,
                                                                      o.noun, o.position, o.colour_word),))
                            for jy in offsets for jx in offsets]
            for sc in variants:
                key = picture_key(sc)
                if key not in keys:
                    keys[key] = len(scenes)
                    scenes.append(sc)
                row_comp.append(ci)
                row_img.append(keys[key])
                row_w.append(comp.prior / len(variants))
        self.scenes = scenes
        self._keys = keys
        self._row_comp = np.array(row_comp)
        self._row_img = np.array(row_img)
        self._row_w = np.array(row_w)
        self.n_support = len(scenes)
        latents = self._support_latents(cache, progress)
        self._support = latents  # (J, C, h, w) float32 on CPU
        self._den = DiscreteDenoiser(latents.reshape(self.n_support, -1).to(self.device))
        self._null = self.condition("")

    @classmethod
    def build(cls, device: str = "cpu", **kwargs) -> "WorldDenoiser":
        """Load the bundled toy model (float32: its VAE and tokenizer) and build the oracle on it."""
        from ..model import load_model

        return cls(load_model("toy", device=device, dtype=torch.float32), **kwargs)

    def __repr__(self) -> str:
        return (f"WorldDenoiser({self.name!r}, {self.n_support} pictures from {len(self.compositions)} compositions, "
                f"jitter grid {self.jitter_grid}, split {self.split!r}, device={self.device})")

    # -- the support ----------------------------------------------------------------------------------
    def _cache_path(self) -> Path:
        from ..cache import cache_dir

        h = hashlib.sha256()
        h.update(f"v{CACHE_VERSION}|{self.jitter_grid}|{torch.device(self.device).type}|".encode())
        h.update(_weights_hash(self._toy.pipe.vae).encode())
        h.update(repr(self._toy.scaling_factor).encode())
        h.update(Path(world.__file__).read_bytes())  # how pictures are drawn
        h.update(repr([picture_key(s) for s in self.scenes]).encode())
        return cache_dir() / "oracle" / f"support-{h.hexdigest()[:24]}.safetensors"

    def _support_latents(self, cache: bool, progress: bool) -> torch.Tensor:
        from safetensors.torch import load_file, save_file
        from tqdm.auto import tqdm

        path = self._cache_path() if cache else None
        if path is not None and path.exists():
            try:
                lat = load_file(str(path))["latents"]
                if lat.shape == (self.n_support, *self.latent_shape):
                    return lat
            except Exception:  # a damaged file: encode again
                pass
        out = []
        batch = 128
        with torch.inference_mode():
            for i in tqdm(range(0, self.n_support, batch), desc="oracle: encode the world", disable=not progress):
                images = np.stack([s.render() for s in self.scenes[i : i + batch]])
                out.append(self._toy.encode_image(images).float().cpu())
        lat = torch.cat(out).contiguous()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                save_file({"latents": lat}, str(tmp))
                tmp.replace(path)
            except OSError:  # a read-only cache folder only costs the next build its encoding
                pass
        return lat

    def latents(self, j) -> torch.Tensor:
        """Support latent(s) ``j`` (an index or indices), float32 (n, C, h, w)."""
        idx = torch.as_tensor(j).reshape(-1)
        return self._support[idx].clone()

    def image(self, j: int) -> np.ndarray:
        """The exact render of support picture ``j``, uint8 (H, W, 3)."""
        return self.scenes[int(j)].render()

    def index_of(self, scene: world.Scene) -> int:
        """The support index of the picture ``scene`` draws (its centres must lie on the support's grid)."""
        key = picture_key(scene)
        if key not in self._keys:
            raise ValueError(f"the oracle's support has no picture of {scene.caption()!r} with centres "
                             f"{[(round(o.cx, 3), round(o.cy, 3)) for o in scene.objects]}: lone objects lie on a "
                             f"{self.jitter_grid}×{self.jitter_grid} jitter grid (offsets "
                             f"{jitter_offsets(self.jitter_grid)}) "
                             "and pairs at one position; take a scene from oracle.scenes")
        return self._keys[key]

    def composition_picture(self, scene: world.Scene) -> int:
        """The support index of a picture of ``scene``'s composition (kind, relation, and each object's colour,
        shape, size, noun and position), wherever the jitter put the scene's own picture: no caption mentions the
        jitter, so the exact information of any caption is the same for every picture of one composition."""
        def key(sc):
            return sc.kind, sc.relation, tuple((o.colour, o.shape, o.size, o.noun, o.position) for o in sc.objects)

        if not hasattr(self, "_composition_keys"):
            self._composition_keys = {key(c.scene): ci for ci, c in enumerate(self.compositions)}
        ci = self._composition_keys.get(key(scene))
        if ci is None:
            raise ValueError(f"the oracle ({self.split!r} split) has no composition of {scene.caption()!r}; "
                             "build it with split='all' for held-out compositions")
        return int(self._row_img[np.flatnonzero(self._row_comp == ci)[0]])

    # -- the prompt interface of DiffusionModel -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self._toy.device

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self._toy.latent_shape

    # An exact denoiser is exact at every log-SNR: its range is where its information lies, so that the
    # estimators' defaults (LogSNRSampler.for_model) integrate all of it. Every posterior of the support has
    # settled by α ≈ -1 and is still the prior below -16 (measured; see the module docstring).
    LOGSNR_RANGE = (-16.0, 8.0)

    @property
    def logsnr_range(self) -> tuple[float, float]:
        """(-16, 8): the log-SNRs that hold all of the world's information (the default range of the
        estimators on the oracle). The toy model's trained range is :attr:`model_logsnr_range`."""
        return self.LOGSNR_RANGE

    @property
    def model_logsnr_range(self) -> tuple[float, float]:
        """The toy model's trained range, -5.36 … 7.07 (to compare the two on the same range)."""
        return self._toy.logsnr_range

    @property
    def tokenizer(self):
        return self._toy.tokenizer

    @property
    def image_size(self) -> int:
        return self._toy.image_size

    @property
    def max_tokens(self) -> int:
        return self._toy.max_tokens

    @property
    def scaling_factor(self) -> float:
        return self._toy.scaling_factor

    dtype = torch.float32

    def tokenize(self, prompt: str):
        return self._toy.tokenize(prompt)

    def remove_word(self, prompt: str, word: str, policy: str = "delete", replacement: str = "_",
                    occurrence: int | None = None) -> str:
        return self._toy.remove_word(prompt, word, policy, replacement, occurrence)

    def caption_likelihood(self, prompt: str) -> np.ndarray:
        """p(prompt | composition) under the training's caption process, (len(compositions),)."""
        return self._captions.likelihood(prompt)

    def posterior(self, prompt: str) -> np.ndarray:
        """p(picture | prompt) over the support, (J,). Raises :class:`PromptError` for a prompt no
        scene of the world is ever captioned with."""
        lik = self.caption_likelihood(prompt)
        mass = np.bincount(self._row_img, weights=self._row_w * lik[self._row_comp], minlength=self.n_support)
        total = mass.sum()
        if not total > 0:
            raise PromptError(
                f"no scene of the toy world is ever captioned {prompt!r}, so the oracle has no posterior for it. "
                "Captions are 'a {size} {colour} {noun} {position phrase}' or 'a ... {relation} a ...' with whole "
                "groups dropped (remove 'on the left' or 'left of', not 'left'; see data/WORLD_CARD.md)")
        return mass / total

    def log_posterior(self, prompt: str) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.posterior(prompt))

    def encode_text(self, prompts: str | list[str]) -> torch.Tensor:
        """Log posteriors over the support pictures, float64 (B, J): the oracle's conditions."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for p in prompts:
            self.tokenize(p)  # the same type and length checks as the toy model
        return torch.from_numpy(np.stack([self.log_posterior(p) for p in prompts])).to(self.device)

    def condition(self, prompts: str | list[str] | None) -> torch.Tensor:
        """The ``cond`` that :meth:`eps` takes; None or "" gives the prior (the null condition)."""
        if prompts is None:
            return self.null_condition()
        return self.encode_text(prompts)

    def null_condition(self) -> torch.Tensor:
        """The log prior over the support, (1, J)."""
        return self._null

    def eps(self, z: torch.Tensor, logsnr, cond: torch.Tensor | None = None, max_batch: int | None = None,
            grad: bool = False) -> torch.Tensor:
        """The exact ε-MMSE estimate (float32, shaped like ``z``): the posterior-weighted average of the
        support given z and the condition (``DiscreteDenoiser.eps``). ``max_batch`` is accepted for
        ``DiffusionModel``'s signature (memory is bounded anyway); ``grad`` is not supported."""
        if grad:
            raise NotImplementedError("the oracle's eps has no autograd path; use the toy model for gradients")
        if z.ndim != 4 or tuple(z.shape[1:]) != self.latent_shape:
            raise ImageFormatError(f"z must have shape (B, {', '.join(map(str, self.latent_shape))}), "
                                   f"got {tuple(z.shape)}")
        cond = self.null_condition() if cond is None else cond
        if cond.ndim != 2 or cond.shape[1] != self.n_support or cond.shape[0] not in (1, z.shape[0]):
            raise ValueError(f"cond must be log posteriors over the oracle's {self.n_support} pictures, batch 1 or "
                             f"{z.shape[0]} (from oracle.condition(...)), got shape {tuple(cond.shape)}")
        a = torch.as_tensor(logsnr, dtype=torch.float64).reshape(-1)
        if a.numel() not in (1, z.shape[0]):
            raise ValueError(f"logsnr has {a.numel()} values for a batch of {z.shape[0]}")
        with torch.no_grad():
            return self._den.eps(z, a, cond)

    def pred_x0(self, z: torch.Tensor, logsnr, eps: torch.Tensor) -> torch.Tensor:
        return self._toy.pred_x0(z, logsnr, eps)

    def encode_image(self, image) -> torch.Tensor:
        """Scaled VAE latents of images (the toy model's VAE), float32 (B, C, h, w)."""
        return self._toy.encode_image(image)

    def latent_of(self, image) -> torch.Tensor:
        """Latents of images, or latents given as such (the toy model's :meth:`latent_of`)."""
        return self._toy.latent_of(image)

    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 images (B, H, W, 3) from scaled latents (the toy model's VAE)."""
        return self._toy.decode(latents)

    # -- exact answers -------------------------------------------------------------------------------
    def exact_information(self, scene_or_index, strong_prompt: str, weak_prompt: str = "") -> float:
        """log p(x | strong) − log p(x | weak) in nats for the support picture x (an index or a scene
        on the support): what the standard-form estimate of i(x; strong | weak) converges to over the
        whole log-SNR line (``weak_prompt=""``: the mutual information of ``strong_prompt``)."""
        j = scene_or_index if isinstance(scene_or_index, (int, np.integer)) else self.index_of(scene_or_index)
        with np.errstate(divide="ignore"):
            return float(np.log(self.posterior(strong_prompt)[j]) - np.log(self.posterior(weak_prompt)[j]))


def model_beside_world(model, oracle: WorldDenoiser, scene: world.Scene, words: list[str] | None = None,
                       n: int = 64, seed: int = 0, world_n: int = 1024):
    """What the trained ``model`` reads from a world picture beside what the world holds, in nats.

    For the exact render of ``scene`` (a picture on the oracle's support): i(x; caption) and
    i(x; w | rest) for each of ``words`` (default: the object's size, colour and noun), each as

    - ``model``: the trained model's standard-form estimate on its own trained log-SNR range;
    - ``world, model's range``: the exact world denoiser's estimate on that same range;
    - ``world, exact``: log p(x | strong) − log p(x | weak) (all log-SNRs).

    ``n`` samples for the model, ``world_n`` for the (cheap) exact denoiser, whose information sits in
    narrow bands of log-SNR that few samples miss. A pandas table, one row per term, with standard errors. The first two columns differ where the
    model's denoiser is not the world's; the last two differ by the information below the model's
    range (the world's pictures are told apart at log-SNRs below -5.36, where the model never trained)."""
    import pandas as pd

    from ..immse import LogSNRSampler
    from ..info import prompt_information

    caption = scene.caption()
    o = scene.objects[0]
    words = words or [o.size, o.colour_word or o.colour, o.noun]
    j = oracle.index_of(scene)
    image = oracle.image(j)
    model_range = LogSNRSampler.for_model(model)
    kw = dict(words=words, seed=seed, form="standard", keep_map=False)
    on_model = prompt_information(model, image, caption, n=n, **kw)
    # the world's integrand is spiky at low log-SNR (a few strata hold all of it): many cheap samples
    on_world = prompt_information(oracle, image, caption, n=world_n, sampler=model_range, batch_size=512, **kw)
    rows = []
    for term, m_r, w_r, weak in [(f"i(x; '{caption}')", on_model.prompt, on_world.prompt, "")] + [
            (f"i(x; {w} | rest)", on_model.words[w], on_world.words[w], on_model.reduced_prompts[w]) for w in words]:
        rows.append({"term": term, "model": m_r.value, "± model": m_r.stderr, "world, model's range": w_r.value,
                     "± world": w_r.stderr, "world, exact": oracle.exact_information(j, caption, weak)})
    table = pd.DataFrame(rows).set_index("term")
    table.attrs.update(model=on_model, world=on_world)  # the estimates themselves (α-curves), not recomputed
    return table
