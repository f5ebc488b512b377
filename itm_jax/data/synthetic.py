"""Built-in synthetic captioned-image dataset: coloured shapes in spatial relations.

Needs no download and builds in a few seconds, so it is the default of ``make demo`` and of the
tests. Each image shows 2 or 3 objects (a shape, a colour and a size each) on a tinted
background:

- a *pair*, ``first`` left of ``second`` (axis ``horizontal``) or ``first`` above ``second``
  (axis ``vertical``);
- optionally a *third* object on one ``side`` of the pair: above or below it for a horizontal
  pair, left or right of it for a vertical pair.

Each image has 5 differently-worded, lower-case English captions, all true of it ("a small red
circle is to the left of a big blue square", "there is a big blue square right of a small red
circle, and a green triangle is above both of them", ...), from templates and synonyms.

Hard negatives by construction. Most scenes come with *twins* in the same split: scenes that
differ in exactly one thing (see ``TWIN_KINDS``): one object's colour, shape or size, a
relation word, or one attribute (or the whole object, i.e. the order) swapped between two
objects. A twin pair of a ``swap_*`` kind ("a red circle left of a blue square" / "a blue
square left of a red circle") gets the same template and synonym choices, so its captions are
word-for-word permutations of each other: a bag-of-words text encoder cannot tell them apart,
only one that binds attributes to objects and reads order can.

Splits are fixed and disjoint: no scene (symbolic content) appears twice in the dataset.
``test`` is drawn first, then ``val``, then ``train``, each from its own random stream, so the
test split does not depend on ``num_val`` or ``num_train``, nor val on ``num_train``:
training-set-size sweeps share one test set. The same configuration gives the
same dataset bit for bit with a given NumPy and Pillow version.

Ids: image ids number the images in drawing order (test from 0, then val, then train); caption
``k`` of image ``i`` has id ``5 * image_id + k``. ``label`` is the image's index in its split
(the one-class-per-training-image instance label of the dual-path paper; val and test use the
same rule, so their labels index their own split, not training classes).

Images are rendered on demand with Pillow (4x supersampled, then box-filtered), uint8
``[S, S, 3]``, with nuisance: background tint, object colour and size jitter, position jitter
and pixel noise. ``itm_jax.data.synthetic_features`` turns them into precomputed features.

Usage::

    splits = synthetic_splits(seed=0)       # {"train", "val", "test"}: SyntheticSource
    splits["test"].image(0)["image"]         # uint8 [64, 64, 3]
    splits["test"].twins                     # [(i, j, kind), ...]
    synthetic_features.write_precomp("data/synthetic_precomp", splits)
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from itm_jax.errors import ConfigError

# Bump when a change alters any image or caption produced from a given configuration.
GENERATOR_VERSION = 1

CAPTIONS_PER_IMAGE = 5
SPLITS = ("train", "val", "test")

COLOURS = {
    "red": (215, 45, 45),
    "green": (45, 175, 65),
    "blue": (55, 95, 235),
    "yellow": (235, 210, 50),
    "purple": (155, 65, 200),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")

# What a twin changes. Single-attribute kinds change one word of a caption; ``swap_*`` kinds
# exchange an attribute (``swap_order``: the whole objects) between two objects, which leaves a
# caption's bag of words unchanged.
TWIN_KINDS = (
    "colour",
    "shape",
    "size",
    "relation",
    "swap_colour",
    "swap_shape",
    "swap_size",
    "swap_order",
)
BOW_AMBIGUOUS_KINDS = frozenset(k for k in TWIN_KINDS if k.startswith("swap_"))

_ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES}
_OTHER_AXIS = {"horizontal": "vertical", "vertical": "horizontal"}
_SIDES = {"horizontal": ("above", "below"), "vertical": ("left", "right")}
_OPPOSITE = {"above": "below", "below": "above", "left": "right", "right": "left"}


class Obj(NamedTuple):
    """One object of a scene (canonical words)."""

    shape: str
    colour: str
    size: str


class Scene(NamedTuple):
    """The symbolic content of an image, which is all its captions describe.

    ``objects`` is ``(first, second)`` or ``(first, second, third)``; ``axis`` places ``first``
    left of (``horizontal``) or above (``vertical``) ``second``; ``side`` is where ``third``
    is relative to both of them (``above``/``below`` for a horizontal pair, ``left``/``right``
    for a vertical one), ``None`` without a third object.
    """

    objects: tuple[Obj, ...]
    axis: str
    side: str | None


class Layout(NamedTuple):
    """Where and how an image draws its scene's objects (``K`` = number of objects).

    ``centres``: float64 ``[K, 2]`` (x, y) pixels, y downwards; ``half_extents``: float64
    ``[K]`` pixels (circle radius, the others scaled from it); ``colours``: uint8 ``[K, 3]``;
    ``cells``: int ``[K, 2]`` (column, row) of the 3x3 grid each object sits in;
    ``background``: uint8 ``[3]``; ``noise_seed``: seed of the pixel noise.
    """

    centres: np.ndarray
    half_extents: np.ndarray
    colours: np.ndarray
    cells: np.ndarray
    background: np.ndarray
    noise_seed: int


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the dataset.

    Attributes:
      seed: master seed.
      num_train, num_val, num_test: images per split (captions are 5x that).
      image_size: side ``S`` of the square images; a multiple of 8 (the feature extractor
        halves it, then averages a 4x4 grid), at least 32 (below, small shapes are a few
        pixels and stop being recognisable).
      twin_weights: probabilities that a freshly drawn scene gets 0, 1, 2, ... twins in its
        split (the default puts about 3 in 4 images in a planted twin group). ``(1.0,)``
        plants none (chance twins remain).
    """

    seed: int = 0
    num_train: int = 4000
    num_val: int = 500
    num_test: int = 500
    image_size: int = 64
    twin_weights: tuple[float, ...] = (0.4, 0.4, 0.2)

    def __post_init__(self):
        # A list would make the configuration unhashable (write_precomp compares configs).
        object.__setattr__(self, "twin_weights", tuple(float(w) for w in self.twin_weights))
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}.")
        for name in ("num_train", "num_val", "num_test"):
            n = getattr(self, name)
            if not isinstance(n, (int, np.integer)) or n < 1:
                raise ConfigError(f"{name} must be a positive integer, got {n!r}.")
        total = self.num_train + self.num_val + self.num_test
        if total > NUM_SCENES // 4:
            raise ConfigError(
                f"{total} images requested, but the dataset has {NUM_SCENES} distinct scenes and "
                f"draws them without repeats; ask for at most {NUM_SCENES // 4}."
            )
        if self.image_size < 32 or self.image_size % 8:
            raise ConfigError(
                f"image_size must be a multiple of 8 and at least 32, got {self.image_size}."
            )
        w = np.asarray(self.twin_weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or (w < 0).any() or not np.isclose(w.sum(), 1.0):
            raise ConfigError(
                "twin_weights must be non-negative probabilities of 0, 1, 2, ... twins summing "
                f"to 1, got {self.twin_weights!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["twin_weights"] = list(self.twin_weights)
        return d


_NUM_OBJECTS = len(COLOURS) * len(SHAPES) * len(SIZES)
# Ordered pairs on two axes, then the same with a third object on one of two sides.
NUM_SCENES = _NUM_OBJECTS**2 * 2 * (1 + _NUM_OBJECTS * 2)


# ---------------------------------------------------------------------------- scenes and twins


def neighbours(scene: Scene) -> Iterator[tuple[str, Scene]]:
    """Every twin of ``scene`` as ``(kind, twin)``, kinds from ``TWIN_KINDS``.

    A twin reached two ways (swapping the colours of two objects that differ only in colour is
    also swapping their order) is yielded under each kind; the first, in ``TWIN_KINDS`` order,
    is its name.
    """
    objs = scene.objects

    def with_objects(new: Sequence[Obj]) -> Scene:
        return scene._replace(objects=tuple(new))

    for i, obj in enumerate(objs):
        for attr, values in _ATTRIBUTES.items():
            for v in values:
                if v != getattr(obj, attr):
                    new = list(objs)
                    new[i] = obj._replace(**{attr: v})
                    yield attr, with_objects(new)
    if scene.side is None:
        yield "relation", scene._replace(axis=_OTHER_AXIS[scene.axis])
    else:
        yield "relation", scene._replace(side=_OPPOSITE[scene.side])
    for i, j in itertools.combinations(range(len(objs)), 2):
        a, b = objs[i], objs[j]
        for attr in _ATTRIBUTES:
            if getattr(a, attr) != getattr(b, attr):
                new = list(objs)
                new[i] = a._replace(**{attr: getattr(b, attr)})
                new[j] = b._replace(**{attr: getattr(a, attr)})
                yield f"swap_{attr}", with_objects(new)
        if a != b:
            new = list(objs)
            new[i], new[j] = b, a
            yield "swap_order", with_objects(new)


def find_twins(scenes: Sequence[Scene]) -> list[tuple[int, int, str]]:
    """All twin pairs among ``scenes``, as ``(i, j, kind)`` with ``i < j``, sorted.

    Includes chance twins across generation groups, not only the planted ones.
    """
    where = {s: i for i, s in enumerate(scenes)}
    found: dict[tuple[int, int], str] = {}
    for i, scene in enumerate(scenes):
        for kind, twin in neighbours(scene):
            j = where.get(twin)
            if j is not None and j > i:
                found.setdefault((i, j), kind)
    return sorted((i, j, kind) for (i, j), kind in found.items())


def _random_scene(rng: np.random.Generator) -> Scene:
    n = 2 + int(rng.integers(2))
    objs = tuple(
        Obj(
            SHAPES[rng.integers(len(SHAPES))],
            tuple(COLOURS)[rng.integers(len(COLOURS))],
            SIZES[rng.integers(len(SIZES))],
        )
        for _ in range(n)
    )
    axis = ("horizontal", "vertical")[rng.integers(2)]
    side = _SIDES[axis][rng.integers(2)] if n == 3 else None
    return Scene(objs, axis, side)


def _draw_groups(n: int, rng: np.random.Generator, seen: set, twin_weights) -> list[list[Scene]]:
    """Groups of a fresh scene and its planted twins, ``n`` scenes in all, none in ``seen``.

    ``seen`` grows by the drawn scenes, which keeps splits disjoint.
    """
    groups: list[list[Scene]] = []
    total = 0
    while total < n:
        base = _random_scene(rng)
        if base in seen:
            continue
        seen.add(base)
        group = [base]
        num_twins = min(int(rng.choice(len(twin_weights), p=twin_weights)), n - total - 1)
        by_kind: dict[str, list[Scene]] = {}
        if num_twins:
            for kind, twin in neighbours(base):
                if twin not in seen:
                    by_kind.setdefault(kind, []).append(twin)
        for _ in range(num_twins):
            # Kind first, then a twin of that kind: single-attribute twins far outnumber swaps
            # and would otherwise crowd out the bag-of-words-ambiguous ones.
            kinds = [k for k in TWIN_KINDS if by_kind.get(k)]
            if not kinds:
                break
            options = by_kind[kinds[rng.integers(len(kinds))]]
            twin = options[rng.integers(len(options))]
            for listed in by_kind.values():  # a twin reachable two ways is listed twice
                if twin in listed:
                    listed.remove(twin)
            seen.add(twin)
            group.append(twin)
        groups.append(group)
        total += len(group)
    return groups


# ---------------------------------------------------------------------------------- captions

_SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
}
_COLOUR_WORDS = {c: (c,) for c in COLOURS} | {"purple": ("purple", "violet")}
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# Relation of the subject to the reference ("S left of O").
_RELATION_WORDS = {
    "left": ("left of", "to the left of", "on the left of"),
    "right": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over", "higher than"),
    "below": ("below", "under", "beneath", "lower than"),
}
_SYNONYMS = {**_SHAPE_WORDS, **_COLOUR_WORDS, **_SIZE_WORDS, **_RELATION_WORDS}
# How the third object refers to the pair.
_PAIR_WORDS = ("them", "both of them", "the other two", "the pair")

# (template, is a noun phrase). {s}: subject, {o}: reference object, {r}: relation of s to o.
_PAIR_FORMS = (
    ("{s} is {r} {o}", False),
    ("{s} {r} {o}", True),
    ("there is {s} {r} {o}", False),
    ("{r} {o} there is {s}", False),
    ("{o} with {s} {r} it", True),
    ("{s} sits {r} {o}", False),
)
_NOUN_PREFIXES = ("", "an image of ", "a picture of ", "a scene with ")
_CLAUSE_PREFIXES = ("", "in this image ", "in the picture ")
# {c}: third object, {r}: its relation to the pair, {p}: a word for the pair.
_THIRD_FORMS = (
    ", and {c} is {r} {p}",
    " with {c} {r} {p}",
    ", and {r} {p} there is {c}",
    " while {c} sits {r} {p}",
)
_OBJECT_PHRASES = ("a {size} {colour} {shape}", "a {colour} {shape} that is {size}")

_PAIR_RELATION = {("horizontal", 0): "left", ("horizontal", 1): "right"}
_PAIR_RELATION |= {("vertical", 0): "above", ("vertical", 1): "below"}


def _name(obj: Obj, phrase: str, word: dict[str, str]) -> str:
    return phrase.format(size=word[obj.size], colour=word[obj.colour], shape=word[obj.shape])


def captions(scene: Scene, rng: np.random.Generator) -> list[str]:
    """The 5 captions of ``scene``, worded by ``rng``.

    The number of draws from ``rng`` does not depend on the scene, so two scenes captioned
    from equal generator states get the same templates and synonyms: that is how ``swap_*``
    twins get captions with equal bags of words.
    """
    combos = rng.choice(len(_PAIR_FORMS) * 2, size=CAPTIONS_PER_IMAGE, replace=False)
    # One synonym per canonical word for the whole caption (not per mention), so that
    # exchanging two objects exchanges their words exactly; then the phrase style, prefix,
    # third-object form and pair word.
    draws = rng.random((CAPTIONS_PER_IMAGE, len(_SYNONYMS) + 4))
    out = []
    for combo, u in zip(combos.tolist(), draws.tolist()):
        form, subject = divmod(combo, 2)
        template, noun_phrase = _PAIR_FORMS[form]
        word = {k: v[int(x * len(v))] for (k, v), x in zip(_SYNONYMS.items(), u)}
        phrase = _OBJECT_PHRASES[int(u[-4] < 0.25)]
        prefixes = _NOUN_PREFIXES if noun_phrase else _CLAUSE_PREFIXES
        prefix = prefixes[int(u[-3] * len(prefixes))]
        third_form = _THIRD_FORMS[int(u[-2] * len(_THIRD_FORMS))]
        pair_word = _PAIR_WORDS[int(u[-1] * len(_PAIR_WORDS))]

        first, second = scene.objects[:2]
        s, o = (first, second) if subject == 0 else (second, first)
        text = template.format(
            s=_name(s, phrase, word), o=_name(o, phrase, word),
            r=word[_PAIR_RELATION[scene.axis, subject]],
        )
        if scene.side is not None:
            c = _name(scene.objects[2], phrase, word)
            text += third_form.format(c=c, r=word[scene.side], p=pair_word)
        out.append(prefix + text)
    return out


# ---------------------------------------------------------------------------------- rendering

# Pillow draws without anti-aliasing, and jagged 10-pixel shapes are hard to tell apart: draw
# 4x larger, then box-filter down.
_SUPERSAMPLE = 4
# Fractions of S. The jitter is the most that keeps two large objects in adjacent cells apart
# and every object inside the image.
_JITTER = 0.035
_HALF_EXTENT = {"small": 0.075, "large": 0.125}  # times a 0.92-1.04 size jitter
_NOISE_STD = 3.0


def sample_layout(scene: Scene, image_size: int, rng: np.random.Generator) -> Layout:
    """Places the scene's objects on a 3x3 grid of cells, with jitter.

    The pair shares a row (horizontal) or column (vertical) and sits in increasing cells along
    the axis; the third object is in a row (column) strictly before or after the pair's. So
    every stated relation holds with at least a cell (S/3) minus twice the jitter of margin.
    """
    along = np.sort(rng.choice(3, size=2, replace=False))  # first, second along the axis
    if scene.side is None:
        across = np.full(2, rng.integers(3))
    else:
        before = scene.side in ("above", "left")
        pair = int(rng.integers(1, 3)) if before else int(rng.integers(0, 2))
        third = int(rng.integers(0, pair)) if before else int(rng.integers(pair + 1, 3))
        across = np.array([pair, pair, third])
        along = np.append(along, rng.integers(3))
    cells = np.stack([along, across], axis=1)
    if scene.axis == "vertical":
        cells = cells[:, ::-1]  # along the axis is y
    k = len(scene.objects)
    cell = image_size / 3
    centres = (cells + 0.5) * cell + rng.uniform(-_JITTER, _JITTER, size=(k, 2)) * image_size
    scale = rng.uniform(0.92, 1.04, size=k)
    half = np.array([_HALF_EXTENT[o.size] for o in scene.objects]) * scale * image_size
    base = np.array([COLOURS[o.colour] for o in scene.objects], dtype=np.float64)
    colours = np.clip(base + rng.uniform(-18, 18, size=(k, 3)), 0, 255).astype(np.uint8)
    grey = rng.uniform(25, 100)
    background = np.clip(grey + rng.uniform(-12, 12, size=3), 0, 255).astype(np.uint8)
    noise_seed = int(rng.integers(2**63))
    return Layout(centres, half, colours, cells.astype(np.int64), background, noise_seed)


def _polygon(shape: str, cx: float, cy: float, h: float) -> list[tuple[float, float]]:
    if shape == "square":
        a = 0.85 * h  # a square of half-side h would look much heavier than a circle of radius h
        return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    if shape == "triangle":
        return [
            (cx + h * math.cos(t), cy + h * math.sin(t))
            for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
        ]
    if shape == "diamond":
        return [(cx, cy - h), (cx + 0.8 * h, cy), (cx, cy + h), (cx - 0.8 * h, cy)]
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def render(scene: Scene, layout: Layout, image_size: int) -> np.ndarray:
    """uint8 ``[S, S, 3]`` picture of ``scene`` drawn as ``layout`` says."""
    big = image_size * _SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), tuple(int(c) for c in layout.background))
    draw = ImageDraw.Draw(canvas)
    for obj, (cx, cy), h, rgb in zip(
        scene.objects, layout.centres * _SUPERSAMPLE, layout.half_extents * _SUPERSAMPLE,
        layout.colours,
    ):
        fill = tuple(int(c) for c in rgb)
        if obj.shape == "circle":
            draw.ellipse([cx - h, cy - h, cx + h, cy + h], fill=fill)
        else:
            draw.polygon(_polygon(obj.shape, cx, cy, h), fill=fill)
    small = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32)  # box filter
    noise = np.random.default_rng(layout.noise_seed).standard_normal(small.shape, np.float32)
    return np.clip(np.rint(small + _NOISE_STD * noise), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ sources


class SyntheticSource:
    """One split of the synthetic dataset, a ``CaptionedSource`` (images rendered on demand).

    Items:
      image:   ``image`` uint8 ``[S, S, 3]``, ``image_id`` int64, ``label`` int64 (the image's
               index in this split).
      caption: ``caption`` str, ``caption_id`` int64 (``5 * image_id + k``).

    Attributes:
      split: ``train``, ``val`` or ``test``.
      config: the ``SyntheticConfig`` the dataset was drawn from.
      scenes: per image, its ``Scene``.
      image_ids: int64 ``[N]``.
      captions: the ``5 N`` captions; captions ``5i .. 5i+4`` describe image ``i``.
      caption_seeds: uint64 ``[N]``, the seed each image's captions were worded from (shared
        within a twin group).
    """

    def __init__(
        self,
        split: str,
        config: SyntheticConfig,
        scenes: Sequence[Scene],
        image_ids: np.ndarray,
        caption_seeds: np.ndarray,
        layout_seeds: np.ndarray,
    ):
        """Built by ``synthetic_splits``: per image a scene, an id and the seeds of its wording
        and layout (``[N]`` each)."""
        n = len(scenes)
        if not (len(image_ids) == len(caption_seeds) == len(layout_seeds) == n):
            raise ValueError(
                f"SyntheticSource needs one image id, caption seed and layout seed per scene; got "
                f"{n} scenes, {len(image_ids)} ids, {len(caption_seeds)} caption seeds and "
                f"{len(layout_seeds)} layout seeds."
            )
        self.split = split
        self.config = config
        self.scenes = tuple(scenes)
        self.image_ids = np.asarray(image_ids, dtype=np.int64)
        self.caption_seeds = np.asarray(caption_seeds, dtype=np.uint64)
        self._layout_seeds = np.asarray(layout_seeds, dtype=np.uint64)
        self.captions = [
            c
            for scene, cs in zip(self.scenes, self.caption_seeds)
            for c in captions(scene, np.random.default_rng(int(cs)))
        ]
        self._cap_to_img = np.repeat(np.arange(n, dtype=np.int64), CAPTIONS_PER_IMAGE)
        self._cap_to_img.flags.writeable = False

    @property
    def num_images(self) -> int:
        return len(self.scenes)

    @property
    def num_captions(self) -> int:
        return len(self.captions)

    @property
    def cap_to_img(self) -> np.ndarray:
        """``[num_captions]`` int64: index (in this split) of each caption's image."""
        return self._cap_to_img

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def _check(self, index, count: int, what: str) -> int:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < count:
            raise IndexError(
                f"{what} index {index!r} out of range for the {self.split} split "
                f"({count} {what}s); pass an integer in [0, {count})."
            )
        return int(index)

    def layout(self, index: int) -> Layout:
        """Where image ``index`` draws its objects (deterministic)."""
        i = self._check(index, self.num_images, "image")
        rng = np.random.default_rng(int(self._layout_seeds[i]))
        return sample_layout(self.scenes[i], self.image_size, rng)

    def render(self, index: int) -> np.ndarray:
        """uint8 ``[S, S, 3]``: image ``index``."""
        i = self._check(index, self.num_images, "image")
        return render(self.scenes[i], self.layout(i), self.image_size)

    def images(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """uint8 ``[len(indices), S, S, 3]`` (default: every image of the split)."""
        if indices is None:
            indices = range(self.num_images)
        s = self.image_size
        out = np.empty((len(indices), s, s, 3), dtype=np.uint8)
        for k, i in enumerate(indices):
            out[k] = self.render(i)
        return out

    def image(self, index: int) -> dict[str, Any]:
        i = self._check(index, self.num_images, "image")
        return {
            "image": self.render(i),
            "image_id": np.int64(self.image_ids[i]),
            "label": np.int64(i),
        }

    def caption(self, index: int) -> dict[str, Any]:
        j = self._check(index, self.num_captions, "caption")
        image_id, k = self.image_ids[j // CAPTIONS_PER_IMAGE], j % CAPTIONS_PER_IMAGE
        caption_id = np.int64(image_id * CAPTIONS_PER_IMAGE + k)
        return {"caption": self.captions[j], "caption_id": caption_id}

    @functools.cached_property
    def twins(self) -> list[tuple[int, int, str]]:
        """Twin pairs in this split, ``(i, j, kind)`` with image indices ``i < j``."""
        return find_twins(self.scenes)

    def __repr__(self) -> str:
        return (
            f"SyntheticSource(split={self.split!r}, num_images={self.num_images}, "
            f"image_size={self.image_size}, seed={self.config.seed})"
        )


def synthetic_splits(config: SyntheticConfig | None = None, **kwargs) -> dict[str, SyntheticSource]:
    """The dataset's ``train``, ``val`` and ``test`` splits.

    Args:
      config: a ``SyntheticConfig``; default ``SyntheticConfig(**kwargs)``.
      **kwargs: ``SyntheticConfig`` fields, e.g. ``seed=1, num_train=500``; only without
        ``config``.

    Returns:
      ``{"train": ..., "val": ..., "test": ...}`` of ``SyntheticSource``.
    """
    if config is None:
        config = SyntheticConfig(**kwargs)
    elif kwargs:
        raise TypeError(f"Pass either config or SyntheticConfig fields, not both (got {kwargs}).")
    streams = np.random.SeedSequence(config.seed).spawn(len(SPLITS))
    seen: set[Scene] = set()
    weights = np.asarray(config.twin_weights, dtype=np.float64)
    weights /= weights.sum()
    sizes = {"train": config.num_train, "val": config.num_val, "test": config.num_test}
    out, next_id = {}, 0
    for split, stream in zip(("test", "val", "train"), streams):
        rng = np.random.default_rng(stream)
        n = sizes[split]
        groups = _draw_groups(n, rng, seen, weights)
        scenes = [scene for group in groups for scene in group]
        # One caption seed per group: twins get the same wording.
        group_seeds = rng.integers(2**63, size=len(groups), dtype=np.uint64)
        caption_seeds = np.repeat(group_seeds, [len(g) for g in groups])
        layout_seeds = rng.integers(2**63, size=n, dtype=np.uint64)
        order = rng.permutation(n)
        out[split] = SyntheticSource(
            split,
            config,
            [scenes[k] for k in order],
            np.arange(next_id, next_id + n, dtype=np.int64),
            caption_seeds[order],
            layout_seeds,
        )
        next_id += n
    return {split: out[split] for split in SPLITS}
