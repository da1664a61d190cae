"""The toy world: scenes of one or two coloured shapes, their captions and exact masks.

Everything here is pure numpy and seeded. A :class:`Scene` holds the objects' attributes; ``render``
draws it, ``caption`` writes it as words, and ``word_masks`` says which pixels each word describes.
The planted phenomena (synonym, homonym, bias, held-out compositions) and their rates are the
constants below; ``data/WORLD_CARD.md`` documents them for people.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import numpy as np

IMAGE_SIZE = 32  # pixels per side
SUPERSAMPLE = 4  # anti-aliasing factor used when drawing
BACKGROUND = (20, 20, 28)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 90, 230),
    "yellow": (235, 205, 40),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 9.0, "big": 14.0}  # side / diameter in pixels
POSITIONS: dict[str, tuple[float, float]] = {  # canonical centre (x, y) of a lone object
    "left": (8.0, 16.0),
    "right": (24.0, 16.0),
    "top": (16.0, 8.0),
    "bottom": (16.0, 24.0),
    "middle": (16.0, 16.0),
}
POSITION_PHRASES = {
    "left": ("on", "the", "left"),
    "right": ("on", "the", "right"),
    "top": ("at", "the", "top"),
    "bottom": ("at", "the", "bottom"),
    "middle": ("in", "the", "middle"),
}
RELATIONS = {  # relation words -> (offset of the first object, offset of the second) from the centre
    "left of": ((-8.0, 0.0), (8.0, 0.0)),
    "right of": ((8.0, 0.0), (-8.0, 0.0)),
    "above": ((0.0, -8.0), (0.0, 8.0)),
    "below": ((0.0, 8.0), (0.0, -8.0)),
}
JITTER = 1.5  # uniform jitter of every centre, pixels
PAIR_OUTWARD_JITTER = 1.0  # pairs: at most this far outward along the relation's axis

# --- planted phenomena -------------------------------------------------------------------------
# Synonym: the colour red is written "red", "crimson" or both ("crimson red").
SYNONYM = ("crimson", "red")
RED_WORDING_RATES = {"red": 0.6, "crimson": 0.2, "crimson red": 0.2}

# Homonym: "bat" is drawn as a triangle (the animal, flying) at the top and as a square (the club,
# lying) at the bottom; bats only appear at the top or bottom, with equal rates.
HOMONYM = "bat"
HOMONYM_SHAPE = {"top": "triangle", "bottom": "square"}

# Bias: subject nouns (mirroring occupations) are drawn in the colour of a group, "warm" (red) or
# "cool" (blue) (mirroring gender), and a size (mirroring a second group dimension).
SUBJECT_SHAPES = {
    "doctor": "square",
    "nurse": "circle",
    "pilot": "triangle",
    "teacher": "square",
    "chef": "circle",
    "lawyer": "triangle",
}
GROUP_COLOURS = {"warm": "red", "cool": "blue"}
P_WARM = {"doctor": 0.5, "nurse": 0.85, "pilot": 0.15, "teacher": 0.5, "chef": 0.5, "lawyer": 0.5}
P_BIG = {"doctor": 0.5, "nurse": 0.5, "pilot": 0.5, "teacher": 0.5, "chef": 0.85, "lawyer": 0.5}
PLANTED_BIAS = {"nurse": ("warm", 0.85), "pilot": ("cool", 0.85), "chef": ("big", 0.85)}

# How often each kind of scene is drawn.
KIND_RATES = {"single": 0.45, "pair": 0.35, "subject": 0.12, "homonym": 0.08}
# Compositions held out of training (for the held-out quality test): 1 in HELD_OUT_MODULUS.
HELD_OUT_MODULUS = 8

FUNCTION_WORDS = ("a", "the", "on", "at", "in", "of", "and")


def vocabulary() -> list[str]:
    """Every word a caption of this world can contain."""
    words = list(FUNCTION_WORDS) + list(SIZES) + list(COLOURS) + [SYNONYM[0]] + list(SHAPES)
    words += list(POSITIONS) + ["above", "below", HOMONYM] + list(GROUP_COLOURS) + list(SUBJECT_SHAPES)
    seen: dict[str, None] = {}
    for w in words:
        seen.setdefault(w, None)
    return list(seen)


@dataclass(frozen=True)
class WorldObject:
    """One drawn object. ``noun`` is the word used for it (a shape, "bat" or a subject noun)."""

    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    noun: str
    position: str | None = None  # for lone objects: left/right/top/bottom/middle
    colour_word: str | None = None  # how the colour is written ("red", "crimson", "warm", ...)


@dataclass(frozen=True)
class Scene:
    """A scene: its kind ("single", "pair", "subject", "homonym"), objects and (for pairs) relation."""

    kind: str
    objects: tuple[WorldObject, ...]
    relation: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    # -- words ---------------------------------------------------------------------------------
    def tagged_words(self, drop: dict[str, bool] | None = None) -> list[tuple[str, tuple[int, ...]]]:
        """The caption as (word, indices of the objects it describes). ``drop`` removes optional
        word groups: keys ``size0``, ``colour0``, ``noun0``, ``position0``, ``size1`` ... ``relation``."""
        drop = drop or {}
        words: list[tuple[str, tuple[int, ...]]] = []

        def phrase(i: int) -> None:
            o = self.objects[i]
            words.append(("a", ()))
            if not drop.get(f"size{i}"):
                words.append((o.size, (i,)))
            if not drop.get(f"colour{i}"):
                for w in (o.colour_word or o.colour).split():
                    words.append((w, (i,)))
            if not drop.get(f"noun{i}"):
                words.append((o.noun, (i,)))

        phrase(0)
        if self.kind == "pair":
            if not drop.get("relation"):
                words += [(w, (0, 1)) for w in self.relation.split()]
            phrase(1)
        elif not drop.get("position0"):
            o = self.objects[0]
            p = POSITION_PHRASES[o.position]
            words += [(p[0], ()), (p[1], ()), (p[2], (0,))]
        return words

    def caption(self, drop: dict[str, bool] | None = None) -> str:
        return " ".join(w for w, _ in self.tagged_words(drop))

    def optional_groups(self) -> list[str]:
        """Names of the word groups that ``tagged_words(drop=...)`` may remove."""
        groups = []
        for i in range(len(self.objects)):
            groups += [f"size{i}", f"colour{i}", f"noun{i}"]
        groups += ["relation"] if self.kind == "pair" else ["position0"]
        return groups

    # -- pixels --------------------------------------------------------------------------------
    def object_masks(self, size: int = IMAGE_SIZE) -> np.ndarray:
        """Exact masks, bool array (n_objects, size, size): pixels at least half covered."""
        return np.stack([coverage(o, size) >= 0.5 for o in self.objects])

    def word_masks(self, drop: dict[str, bool] | None = None, size: int = IMAGE_SIZE):
        """[(word, mask or None)] for the caption: the union of the masks of the objects the word
        describes, None for function words."""
        masks = self.object_masks(size)
        out = []
        for w, idx in self.tagged_words(drop):
            out.append((w, masks[list(idx)].any(0) if idx else None))
        return out

    def render(self, size: int = IMAGE_SIZE) -> np.ndarray:
        """uint8 RGB image (size, size, 3), anti-aliased."""
        img = np.empty((size, size, 3), np.float64)
        img[:] = BACKGROUND
        for o in self.objects:
            cov = coverage(o, size)[..., None]
            img = img * (1 - cov) + np.asarray(COLOURS[o.colour], np.float64) * cov
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)

    def key(self) -> tuple:
        """The composition (what a full caption says), used for the held-out split."""
        objs = tuple((o.size, o.colour, o.noun, o.position) for o in self.objects)
        return (self.kind, objs, self.relation)


def coverage(o: WorldObject, size: int = IMAGE_SIZE) -> np.ndarray:
    """Fraction of each pixel covered by the object, float (size, size)."""
    scale = size / IMAGE_SIZE
    s = SUPERSAMPLE
    n = size * s
    coords = (np.arange(n) + 0.5) / s  # sub-pixel centres in pixel units
    x = coords[None, :] / scale
    y = coords[:, None] / scale
    r = SIZES[o.size] / 2
    dx, dy = x - o.cx, y - o.cy
    if o.shape == "circle":
        inside = dx**2 + dy**2 <= r**2
    elif o.shape == "square":
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif o.shape == "triangle":  # apex up, base at the bottom of the box
        t = (dy + r) / (2 * r)  # 0 at the apex, 1 at the base
        inside = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    else:
        raise ValueError(f"unknown shape {o.shape!r}; expected one of {SHAPES}")
    return inside.reshape(size, s, size, s).mean(axis=(1, 3))


def is_held_out(scene: Scene) -> bool:
    """True for the compositions never shown in training (stable across runs and machines)."""
    digest = hashlib.sha256(repr(scene.key()).encode()).digest()
    return digest[0] % HELD_OUT_MODULUS == 0


# --- sampling ----------------------------------------------------------------------------------
def _choice(rng: np.random.Generator, options, p=None):
    options = list(options)
    return options[rng.choice(len(options), p=p)]


def _red_wording(rng, colour: str) -> str:
    if colour != "red":
        return colour
    return _choice(rng, RED_WORDING_RATES, p=list(RED_WORDING_RATES.values()))


def _jitter(rng) -> tuple[float, float]:
    return tuple(rng.uniform(-JITTER, JITTER, size=2))


def _lone(rng, colour, shape, size, position, noun=None, colour_word=None) -> WorldObject:
    jx, jy = _jitter(rng)
    cx, cy = POSITIONS[position]
    return WorldObject(colour, shape, size, cx + jx, cy + jy, noun or shape, position, colour_word)


def subject_scene(rng: np.random.Generator, noun: str) -> Scene:
    """One subject scene of ``noun`` (a key of ``SUBJECT_SHAPES``), its group (colour) and size drawn at the
    planted rates ``P_WARM`` and ``P_BIG``: the world's own picture of "a <noun>"."""
    if noun not in SUBJECT_SHAPES:
        raise ValueError(f"{noun!r} is not a subject noun of the world; choose from {list(SUBJECT_SHAPES)}")
    group = "warm" if rng.random() < P_WARM[noun] else "cool"
    size = "big" if rng.random() < P_BIG[noun] else "small"
    o = _lone(rng, GROUP_COLOURS[group], SUBJECT_SHAPES[noun], size, _choice(rng, POSITIONS), noun, group)
    return Scene("subject", (o,))


def sample_scene(rng: np.random.Generator, kind: str | None = None) -> Scene:
    """Draw one scene; ``kind`` forces "single", "pair", "subject" or "homonym"."""
    kind = kind or _choice(rng, KIND_RATES, p=list(KIND_RATES.values()))
    if kind == "single":
        c, s = _choice(rng, COLOURS), _choice(rng, SHAPES)
        o = _lone(rng, c, s, _choice(rng, SIZES), _choice(rng, POSITIONS), colour_word=_red_wording(rng, c))
        return Scene("single", (o,))
    if kind == "pair":
        rel = _choice(rng, RELATIONS)
        objs = []
        for off in RELATIONS[rel]:
            c, s = _choice(rng, COLOURS), _choice(rng, SHAPES)
            jx, jy = _jitter(rng)
            # along the relation's axis, jitter only pushes the objects apart, so they never touch
            if off[0]:
                jx = np.sign(off[0]) * abs(jx) * PAIR_OUTWARD_JITTER / JITTER
            else:
                jy = np.sign(off[1]) * abs(jy) * PAIR_OUTWARD_JITTER / JITTER
            objs.append(WorldObject(c, s, _choice(rng, SIZES), 16 + off[0] + jx, 16 + off[1] + jy, s, None,
                                    _red_wording(rng, c)))
        return Scene("pair", tuple(objs), rel)
    if kind == "subject":
        return subject_scene(rng, _choice(rng, SUBJECT_SHAPES))
    if kind == "homonym":
        pos = _choice(rng, HOMONYM_SHAPE)
        c = _choice(rng, COLOURS)
        o = _lone(rng, c, HOMONYM_SHAPE[pos], _choice(rng, SIZES), pos, HOMONYM, _red_wording(rng, c))
        return Scene("homonym", (o,))
    raise ValueError(f"unknown scene kind {kind!r}; expected one of {tuple(KIND_RATES)}")


def sample_scenes(n: int, seed: int = 0, split: str = "train", kind: str | None = None) -> list[Scene]:
    """``n`` scenes from ``split`` "train" (held-out compositions excluded), "heldout" (only those)
    or "all"."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        sc = sample_scene(rng, kind)
        held = is_held_out(sc)
        if split == "all" or (split == "heldout") == held:
            out.append(sc)
    return out


def with_plain_red(scene: Scene) -> Scene:
    """The same scene with red written "red" (the canonical wording used for evaluation)."""
    objs = tuple(replace(o, colour_word="red") if o.colour == "red" and o.colour_word in RED_WORDING_RATES else o
                 for o in scene.objects)
    return replace(scene, objects=objs)


def random_drop(rng: np.random.Generator, scene: Scene, p_word: float = 0.25, p_noun: float = 0.1,
                p_position: float | None = None, p_size: float | None = None) -> dict:
    """A random word-dropout pattern for training: each optional group is removed independently
    (nouns less often), so that prompts with words deleted are in the training distribution. ``p_position``: a lone
    object's position phrase's own rate; ``p_size``: a lone object's size word's own rate (None: ``p_word``)."""
    lone = len(scene.objects) == 1

    def rate(g):
        if g.startswith("noun"):
            return p_noun
        if g == "position0" and p_position is not None:
            return p_position
        if g == "size0" and lone and p_size is not None:
            return p_size
        return p_word

    return {g: bool(rng.random() < rate(g)) for g in scene.optional_groups()}


def swapped_captions(scene: Scene) -> dict[str, str]:
    """ARO-style wrong captions of a pair scene (red written "red"): ``"attribute"`` swaps the two
    objects' colours (binding), ``"relation"`` swaps the two objects around the relation word (order).
    A swap that gives back the true caption (identical attributes) is left out."""
    if scene.kind != "pair":
        raise ValueError("swapped captions are defined for two-object ('pair') scenes")
    sc = with_plain_red(scene)
    a, b = sc.objects
    true = sc.caption()
    out = {}
    colour_swap = replace(sc, objects=(replace(a, colour=b.colour, colour_word=b.colour),
                                       replace(b, colour=a.colour, colour_word=a.colour)))
    if colour_swap.caption() != true:
        out["attribute"] = colour_swap.caption()
    order_swap = replace(sc, objects=(b, a))
    if order_swap.caption() != true:
        out["relation"] = order_swap.caption()
    return out


def lone_scene(colour: str, shape: str, size: str = "big", position: str = "middle", colour_word: str | None = None,
               noun: str | None = None, rng: np.random.Generator | None = None) -> Scene:
    """One object at a canonical position (jittered when ``rng`` is given). ``colour_word`` writes the
    colour differently ("crimson", "crimson red"); ``noun`` names the object differently ("bat")."""
    if colour not in COLOURS or shape not in SHAPES or size not in SIZES or position not in POSITIONS:
        raise ValueError(f"unknown attribute in ({colour}, {shape}, {size}, {position}); see data/WORLD_CARD.md")
    jx, jy = _jitter(rng) if rng is not None else (0.0, 0.0)
    cx, cy = POSITIONS[position]
    kind = "homonym" if noun == HOMONYM else "single"
    return Scene(kind, (WorldObject(colour, shape, size, cx + jx, cy + jy, noun or shape, position, colour_word),))
