"""`itm_jax.data.synthetic` and `synthetic_features`: the built-in shapes dataset and its precomp.

Contract (brief): deterministic from (seed, sizes); fixed disjoint train/val/test; 5 true,
differently-worded captions per image; unique ids; twins in every split, including pairs whose
captions have equal bags of words; `CaptionedSource` conformance; precomp files of the VSE++
layout (float32 [N, F] features, 5 caption lines per image, metadata with ids), written
atomically; with `regions=K`, SCAN's [N, K, F] layout, whose object regions each show their
object, cached beside the global form.

Captions are checked by an independent parser (the vocabulary below, not the generator's
tables) against the rendered geometry (object centres), not against the scene structure the
captions were generated from.
"""

import collections
import json
import os
import re

import numpy as np
import pytest

from itm_jax.data import synthetic as S
from itm_jax.data import synthetic_features as F
from itm_jax.data.datasets import get_sources, image_dim
from itm_jax.data.pipeline import eval_batches
from itm_jax.data.precomp import PrecompSource
from itm_jax.data.source import CaptionedSource, PairSource
from itm_jax.errors import ConfigError, DataError

SMALL = S.SyntheticConfig(seed=3, num_train=300, num_val=100, num_test=120)


@pytest.fixture(scope="module")
def splits():
    return S.synthetic_splits(SMALL)


@pytest.fixture(scope="module")
def precomp_dir(tmp_path_factory, splits):
    directory = tmp_path_factory.mktemp("precomp")
    meta = F.write_precomp(directory, splits, batch_size=64)
    return directory, meta


# ------------------------------------------------------------------ an independent caption parser

SHAPE = {"circle": "circle", "disc": "circle", "square": "square", "triangle": "triangle"}
SHAPE |= {"diamond": "diamond", "rhombus": "diamond"}
COLOUR = {c: c for c in ("red", "green", "blue", "yellow", "purple", "white", "violet")}
COLOUR["violet"] = "purple"
SIZE = {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large"}
RELATION = {
    "to the left of": "left", "on the left of": "left", "left of": "left",
    "to the right of": "right", "on the right of": "right", "right of": "right",
    "above": "above", "over": "above", "higher than": "above",
    "below": "below", "under": "below", "beneath": "below", "lower than": "below",
}

_alt = "|".join
OBJECT = re.compile(
    rf"\ba (?:({_alt(SIZE)}) ({_alt(COLOUR)}) ({_alt(SHAPE)})"
    rf"|({_alt(COLOUR)}) ({_alt(SHAPE)}) that is ({_alt(SIZE)}))\b"
)
REL = re.compile(rf"\b({_alt(sorted(RELATION, key=len, reverse=True))})\b")
PAIR = re.compile(r"\b(both of them|the other two|the pair|them)\b")
PREFIX = re.compile(r"^(an image of |a picture of |a scene with |in this image |in the picture )")
# Skeleton -> which mention is the subject of the pair relation (the other is its reference).
PAIR_SKELETONS = {
    "X is R X": 0, "X R X": 0, "there is X R X": 0, "R X there is X": 1, "X with X R it": 1,
    "X sits R X": 0,
}
THIRD_SKELETONS = ("", ", and X is R P", " with X R P", ", and R P there is X", " while X sits R P")


def parse(caption):
    """(mentions as (shape, colour, size), relations, pair subject index, has third) or raise."""
    mentions, relations = [], []

    def obj(m):
        size, colour, shape = (m[1], m[2], m[3]) if m[1] else (m[6], m[4], m[5])
        mentions.append(S.Obj(SHAPE[shape], COLOUR[colour], SIZE[size]))
        return "X"

    def rel(m):
        relations.append(RELATION[m[1]])
        return "R"

    skeleton = PAIR.sub("P", REL.sub(rel, OBJECT.sub(obj, PREFIX.sub("", caption))))
    for pair, subject in PAIR_SKELETONS.items():
        for third in THIRD_SKELETONS:
            if skeleton == pair + third:
                return mentions, relations, subject, bool(third)
    raise AssertionError(f"caption {caption!r} has an unknown form {skeleton!r}")


def holds(relation, subject_xy, reference_xy, margin):
    dx, dy = np.subtract(subject_xy, reference_xy)
    return {"left": -dx, "right": dx, "above": -dy, "below": dy}[relation] > margin


def bow(caption):
    return collections.Counter(re.findall(r"[a-z]+", caption))


# --------------------------------------------------------------------------------------- scenes


def test_split_sizes_and_caption_layout(splits):
    assert list(splits) == ["train", "val", "test"]
    for name, n in [("train", 300), ("val", 100), ("test", 120)]:
        src = splits[name]
        assert src.num_images == n and src.num_captions == 5 * n
        np.testing.assert_array_equal(src.cap_to_img, np.repeat(np.arange(n), 5))
        for i in range(n):
            assert len(set(src.captions[5 * i : 5 * i + 5])) == 5  # differently worded


def test_default_config_sizes():
    c = S.SyntheticConfig()
    assert (c.num_train, c.num_val, c.num_test, c.image_size) == (4000, 500, 500, 64)


def test_ids_unique_and_splits_disjoint(splits):
    image_ids = np.concatenate([s.image_ids for s in splits.values()])
    assert len(set(image_ids.tolist())) == len(image_ids) == 520
    caption_ids = [
        int(s.caption(j)["caption_id"]) for s in splits.values() for j in range(s.num_captions)
    ]
    assert len(set(caption_ids)) == len(caption_ids) == 2600
    scenes = [sc for s in splits.values() for sc in s.scenes]
    assert len(set(scenes)) == len(scenes)


def test_same_seed_same_bytes_other_seed_differs(splits):
    again = S.synthetic_splits(SMALL)
    other = S.synthetic_splits(seed=4, num_train=300, num_val=100, num_test=120)
    for name, src in splits.items():
        assert again[name].captions == src.captions
        np.testing.assert_array_equal(again[name].image_ids, src.image_ids)
        assert again[name].images(range(10)).tobytes() == src.images(range(10)).tobytes()
        assert other[name].captions != src.captions
        assert other[name].images(range(10)).tobytes() != src.images(range(10)).tobytes()


def test_test_split_independent_of_train_size(splits):
    bigger = S.synthetic_splits(seed=3, num_train=500, num_val=100, num_test=120)
    assert bigger["test"].captions == splits["test"].captions
    assert bigger["val"].captions == splits["val"].captions
    assert bigger["train"].captions != splits["train"].captions


def test_every_caption_is_true_of_its_image(splits):
    for src in splits.values():
        margin = 0.15 * src.image_size
        for i, scene in enumerate(src.scenes):
            xy = src.layout(i).centres
            for caption in src.captions[5 * i : 5 * i + 5]:
                assert caption == caption.lower()
                mentions, relations, subject, has_third = parse(caption)
                assert has_third == (len(scene.objects) == 3), caption
                assert sorted(mentions) == sorted(scene.objects), caption
                s, o = mentions[subject], mentions[1 - subject]
                assert any(
                    scene.objects[a] == s and scene.objects[b] == o
                    and holds(relations[0], xy[a], xy[b], margin)
                    for a, b in [(0, 1), (1, 0)]
                ), caption
                if has_third:
                    assert mentions[2] == scene.objects[2], caption
                    assert holds(relations[1], xy[2], xy[0], margin), caption
                    assert holds(relations[1], xy[2], xy[1], margin), caption


def test_parser_rejects_a_false_caption(splits):
    """The check above can fail: a caption with its relation reversed is caught."""
    src = splits["test"]
    i = next(k for k, sc in enumerate(src.scenes) if sc.objects[0] != sc.objects[1])
    caption = next(c for c in src.captions[5 * i : 5 * i + 5] if parse(c)[2] == 0)
    mentions, relations, _, _ = parse(caption)
    word = {"left": "right of", "right": "left of", "above": "below", "below": "above"}
    wrong = REL.sub(lambda m: word[RELATION[m[1]]], caption, count=1)
    xy = src.layout(i).centres
    a = src.scenes[i].objects.index(mentions[0])
    b = src.scenes[i].objects.index(mentions[1])
    assert not holds(parse(wrong)[1][0], xy[a], xy[b], 0.15 * src.image_size)


# ----------------------------------------------------------------------------- twins and BoW


def _bag(scene):
    words = [v for o in scene.objects for v in o] + [scene.axis, scene.side]
    return collections.Counter(words)


def test_twins_in_every_split(splits):
    for src in splits.values():
        in_twin = {i for i, j, _ in src.twins} | {j for i, j, _ in src.twins}
        assert len(in_twin) / src.num_images > 0.5, src.split
        kinds = {k for *_, k in src.twins}
        assert kinds & S.BOW_AMBIGUOUS_KINDS and kinds - S.BOW_AMBIGUOUS_KINDS
        for i, j, kind in src.twins:
            a, b = src.scenes[i], src.scenes[j]
            assert i < j and a != b and len(a.objects) == len(b.objects)
            diff = _bag(a) - _bag(b)
            if kind in S.BOW_AMBIGUOUS_KINDS:
                assert not diff and _bag(a) == _bag(b)  # the same words, bound differently
            else:
                assert sum(diff.values()) == 1  # exactly one word replaced


def test_find_twins_on_hand_made_scenes():
    red_circle, blue_square = S.Obj("circle", "red", "small"), S.Obj("square", "blue", "large")
    base = S.Scene((red_circle, blue_square), "horizontal", None)
    swapped = S.Scene((blue_square, red_circle), "horizontal", None)
    colour_swap = S.Scene(
        (red_circle._replace(colour="blue"), blue_square._replace(colour="red")), "horizontal", None
    )
    one_colour = S.Scene((red_circle._replace(colour="green"), blue_square), "horizontal", None)
    two_changes = S.Scene((red_circle._replace(colour="green"), blue_square), "vertical", None)
    got = S.find_twins([base, swapped, colour_swap, one_colour, two_changes])
    assert (0, 1, "swap_order") in got
    assert (0, 2, "swap_colour") in got
    assert (0, 3, "colour") in got
    assert (3, 4, "relation") in got
    assert not any({i, j} == {0, 4} for i, j, _ in got)


def test_bag_of_words_cannot_separate_swap_twins(splits):
    ambiguous = separable = 0
    for src in splits.values():
        for i, j, kind in src.twins:
            if src.caption_seeds[i] != src.caption_seeds[j]:
                continue  # chance twins, worded independently
            caps_i, caps_j = src.captions[5 * i : 5 * i + 5], src.captions[5 * j : 5 * j + 5]
            same = [bow(a) == bow(b) for a, b in zip(caps_i, caps_j)]
            if kind in S.BOW_AMBIGUOUS_KINDS:
                assert all(same) and caps_i != caps_j
                ambiguous += 1
            else:
                assert not any(same)
                separable += 1
    assert ambiguous >= 5 and separable >= 5


def test_no_twins_when_disabled():
    planted = S.synthetic_splits(seed=0, num_train=50, num_val=50, num_test=200)["test"]
    plain = S.synthetic_splits(
        seed=0, num_train=50, num_val=50, num_test=200, twin_weights=(1.0,)
    )["test"]
    assert len(plain.twins) < len(planted.twins) / 3
    assert len(set(plain.caption_seeds.tolist())) == plain.num_images


# ------------------------------------------------------------------------- items and rendering


def test_source_protocol_and_items(splits):
    src = splits["val"]
    assert isinstance(src, CaptionedSource)
    item = src.image(7)
    assert item["image"].shape == (64, 64, 3) and item["image"].dtype == np.uint8
    assert item["image_id"] == src.image_ids[7] and item["image_id"].dtype == np.int64
    assert item["label"] == 7 and item["label"].dtype == np.int64
    cap = src.caption(36)
    assert cap == {"caption": src.captions[36], "caption_id": src.image_ids[7] * 5 + 1}
    with pytest.raises(IndexError, match=r"\[0, 100\)"):
        src.image(100)
    with pytest.raises(IndexError, match="caption index"):
        src.caption(-1)


def test_pair_source(splits):
    pairs = PairSource(splits["train"])
    assert len(pairs) == 1500
    item = pairs[1003]
    assert item["image_index"] == 200 and item["caption_index"] == 1003
    assert item["label"] == 200 and item["caption"] == splits["train"].captions[1003]
    np.testing.assert_array_equal(item["image"], splits["train"].render(200))


def test_pixels_show_the_objects(splits):
    src = splits["test"]
    for i in range(20):
        image, layout = src.render(i), src.layout(i)
        for (x, y), rgb in zip(layout.centres, layout.colours):
            centre = image[int(y) - 1 : int(y) + 2, int(x) - 1 : int(x) + 2].reshape(-1, 3)
            np.testing.assert_allclose(centre.mean(0), rgb, atol=6)
        np.testing.assert_allclose(image[:2, :2].reshape(-1, 3).mean(0), layout.background, atol=6)


def test_other_image_size():
    src = S.synthetic_splits(num_train=5, num_val=5, num_test=5, image_size=32)["test"]
    assert src.image(0)["image"].shape == (32, 32, 3)
    assert F.extract_features(src.images()).shape == (5, F.FEATURE_DIM)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_train": 0}, "num_train must be a positive integer"),
        ({"image_size": 60}, "multiple of 8"),
        ({"twin_weights": (0.5, 0.6)}, "twin_weights"),
        ({"num_train": S.NUM_SCENES}, "distinct scenes"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        S.SyntheticConfig(**kwargs)


# --------------------------------------------------------------------------------------- precomp


def test_precomp_files(precomp_dir, splits):
    directory, meta = precomp_dir
    assert sorted(os.listdir(directory)) == sorted(
        [f"{p}_{s}" for p in ("train", "dev", "test") for s in ("ims.npy", "caps.txt")]
        + ["synthetic_meta.json"]
    )
    for name, prefix in [("train", "train"), ("val", "dev"), ("test", "test")]:
        feats = np.load(directory / f"{prefix}_ims.npy")
        assert feats.dtype == np.float32 and feats.shape == (splits[name].num_images, 1024)
        assert np.isfinite(feats).all() and (feats >= 0).all() and feats.std() > 0
        lines = (directory / f"{prefix}_caps.txt").read_text(encoding="utf-8").split("\n")
        assert lines[-1] == "" and lines[:-1] == splits[name].captions
    on_disk = json.loads((directory / "synthetic_meta.json").read_text())
    assert on_disk == meta
    assert on_disk["image_ids"]["dev"] == splits["val"].image_ids.tolist()
    assert on_disk["config"]["seed"] == 3 and on_disk["config"]["num_val"] == 100
    assert on_disk["feature_extractor"]["name"] == F.EXTRACTOR_NAME
    assert [tuple(t) for t in on_disk["twins"]["test"]] == splits["test"].twins


def test_precomp_features_come_from_the_pixels(precomp_dir, splits):
    directory, _ = precomp_dir
    src = splits["test"]
    on_disk = np.load(directory / "test_ims.npy")
    np.testing.assert_allclose(on_disk[:9], F.extract_features(src.images(range(9)), batch_size=4),
                               rtol=1e-5, atol=1e-6)
    # Different images of different scenes give different features.
    assert np.abs(on_disk[0] - on_disk[1]).max() > 1e-3


def test_precomp_reader_reads_it(precomp_dir, splits):
    directory, _ = precomp_dir
    dev = PrecompSource(directory, "dev")
    assert dev.num_images == 100 and dev.num_captions == 500
    assert dev.image(3)["image_id"] == splits["val"].image_ids[3]
    assert dev.caption(17)["caption"] == splits["val"].captions[17]


def test_extract_features_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        F.extract_features(np.zeros((2, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[N, S, S, 3\]"):
        F.extract_features(np.zeros((2, 64, 48, 3), np.uint8))


def test_unwritable_directory_is_a_clear_error(tmp_path, splits):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(DataError, match="Cannot write precomputed features to .*a_file"):
        F.write_precomp(blocker / "out", {"test": splits["test"]})
    assert os.listdir(tmp_path) == ["a_file"]


def test_failed_write_leaves_no_partial_files(tmp_path, splits, monkeypatch):
    few = {"val": splits["val"], "test": splits["test"]}
    calls = []

    def failing_save(f, arr):
        calls.append(1)
        if len(calls) == 2:
            f.write(b"\x93NUMPY partial")
            raise OSError(28, "No space left on device")
        np.lib.format.write_array(f, arr)

    monkeypatch.setattr(F.np, "save", failing_save)
    with pytest.raises(DataError, match="No space left on device.*No temporary files"):
        F.write_precomp(tmp_path, few, batch_size=64)
    assert os.listdir(tmp_path) == []


def test_failed_rename_keeps_no_stale_meta(tmp_path, splits):
    few = {"test": splits["test"]}
    F.write_precomp(tmp_path, few, batch_size=64)
    (tmp_path / "test_caps.txt").unlink()
    (tmp_path / "test_caps.txt").mkdir()
    (tmp_path / "test_caps.txt" / "keep").write_text("x")  # replace() cannot clobber this
    with pytest.raises(DataError, match="Writing precomputed features"):
        F.write_precomp(tmp_path, few, batch_size=64)
    assert sorted(os.listdir(tmp_path)) == ["test_caps.txt", "test_ims.npy"]


def test_damaged_cache_metadata_is_regenerated(tmp_path):
    cfg = {"name": "synthetic", "data_dir": str(tmp_path),
           "synthetic": {"seed": 1, "num_train": 8, "num_val": 4, "num_test": 4}}
    first = get_sources(cfg)["test"].caption(3)
    meta = tmp_path / F.META_FILENAME
    meta.write_text(meta.read_text()[:40])  # a cut-short copy of the cache
    assert get_sources(cfg)["test"].caption(3) == first
    assert json.loads(meta.read_text())["config"]["num_train"] == 8


# ------------------------------------------------------------------------------ region features

REGIONS = 5  # MIN_REGIONS + 1: every image gets at least one copy of the whole scene as padding


@pytest.fixture(scope="module")
def region_dir(tmp_path_factory, splits):
    directory = tmp_path_factory.mktemp("regions")
    meta = F.write_precomp(directory, splits, regions=REGIONS, batch_size=64)
    return directory, meta


def test_global_form_unchanged(precomp_dir):
    """The global features of before the region form existed (any change to the extractor moves
    these far more than float32 rounding on another CPU or XLA version)."""
    on_disk = np.load(precomp_dir[0] / "test_ims.npy").astype(np.float64)
    np.testing.assert_allclose(
        on_disk[:6].sum(axis=1),
        [17.878124283301503, 7.899860737513942, 20.078401916021335, 18.195786555064615,
         10.112875934512488, 12.810366515066335], rtol=1e-5)
    np.testing.assert_allclose(on_disk.sum(), 1894.8526937650304, rtol=1e-5)
    assert json.loads((precomp_dir[0] / F.META_FILENAME).read_text())[
        "feature_extractor"]["regions"] == 0


def test_region_precomp_files(region_dir, precomp_dir, splits):
    directory, meta = region_dir
    assert sorted(os.listdir(directory)) == sorted(os.listdir(precomp_dir[0]))
    assert meta["feature_extractor"]["regions"] == REGIONS
    assert json.loads((directory / F.META_FILENAME).read_text()) == meta
    for name, prefix in [("train", "train"), ("val", "dev"), ("test", "test")]:
        feats = np.load(directory / f"{prefix}_ims.npy")
        assert feats.dtype == np.float32
        assert feats.shape == (splits[name].num_images, REGIONS, F.FEATURE_DIM)
        assert np.isfinite(feats).all() and (feats >= 0).all()
        assert (directory / f"{prefix}_caps.txt").read_bytes() == (
            precomp_dir[0] / f"{prefix}_caps.txt").read_bytes()
    # 4 regions of 1024 float32 per image, as bytes on disk (plus the .npy header).
    assert os.path.getsize(directory / "train_ims.npy") - 300 * REGIONS * 1024 * 4 < 256


def test_regions_are_the_scene_then_each_object_then_the_scene(region_dir, precomp_dir, splits):
    src = splits["test"]
    regions = np.load(region_dir[0] / "test_ims.npy")
    whole = np.load(precomp_dir[0] / "test_ims.npy")
    first_objects = []
    for i in range(src.num_images):
        shows = F.region_objects(src.layout(i), REGIONS)
        n = len(src.scenes[i].objects)
        assert shows.dtype == np.int64 and shows.shape == (REGIONS,)
        assert shows[0] == -1 and sorted(shows[1:1 + n]) == list(range(n))
        assert (shows[1 + n:] == -1).all()
        np.testing.assert_allclose(regions[i, shows == -1], np.broadcast_to(whole[i], (
            REGIONS - n, F.FEATURE_DIM)), rtol=1e-5, atol=1e-6)
        # An object's region is not the whole scene's.
        assert np.abs(regions[i, 1:1 + n] - whole[i]).max() > 0.05
        first_objects.append(shows[1])
    # The order is drawn per image, not the scene's (whose first object is left of or above
    # its second): each object comes first in some images.
    assert set(first_objects) == {0, 1, 2}
    assert 0.2 < np.mean(np.array(first_objects) == 0) < 0.6


def test_region_features_are_deterministic(region_dir, splits):
    again = S.synthetic_splits(SMALL)["val"]
    np.testing.assert_array_equal(F.source_features(again, regions=REGIONS, batch_size=64),
                                  np.load(region_dir[0] / "dev_ims.npy"))
    by_image = F.extract_region_features(
        again.images(range(7)), [again.layout(i) for i in range(7)], REGIONS, batch_size=4)
    np.testing.assert_allclose(by_image, np.load(region_dir[0] / "dev_ims.npy")[:7],
                               rtol=1e-5, atol=1e-6)


def _relative(a, b):
    return np.linalg.norm(a - b) / np.sqrt(np.linalg.norm(a) * np.linalg.norm(b))


def test_an_object_region_shows_that_object(region_dir, splits):
    """Colour twins (other layouts: positions, sizes, tints, noise) differ in the recoloured
    object's region far more than in the regions of the objects they share."""
    changed, kept = [], []
    for name, prefix in [("train", "train"), ("val", "dev"), ("test", "test")]:
        src, feats = splits[name], np.load(region_dir[0] / f"{prefix}_ims.npy")
        for i, j, kind in src.twins:
            if kind != "colour":
                continue
            a, b = src.scenes[i].objects, src.scenes[j].objects
            (k,) = [m for m in range(len(a)) if a[m] != b[m]]
            where_i = list(F.region_objects(src.layout(i), REGIONS))
            where_j = list(F.region_objects(src.layout(j), REGIONS))
            d = [_relative(feats[i, where_i.index(m)], feats[j, where_j.index(m)])
                 for m in range(len(a))]
            changed.append(d[k])
            kept.append(max(d[:k] + d[k + 1:]))
    changed, kept = np.array(changed), np.array(kept)
    assert len(changed) >= 30
    assert np.median(changed) > 3 * np.median(kept)
    assert np.mean(changed > kept) > 0.95


def test_an_object_region_ignores_the_rest_of_the_image(splits):
    """Recolouring one object or retinting the background leaves the other objects' regions
    as they were; only the recoloured object's region and the whole scene move."""
    src = splits["test"]
    index = next(i for i in range(src.num_images) if len(src.scenes[i].objects) == 3)
    scene, layout = src.scenes[index], src.layout(index)
    colours = layout.colours.copy()
    colours[1] = S.COLOURS["green" if scene.objects[1].colour != "green" else "red"]
    tint = np.clip(layout.background.astype(int) + 40, 0, 255).astype(np.uint8)
    variants = [layout, layout._replace(colours=colours), layout._replace(background=tint)]
    images = np.stack([S.render(scene, v, src.image_size) for v in variants])
    feats = F.extract_region_features(images, variants, 4)
    at = {m: list(F.region_objects(layout, 4)).index(m) for m in range(3)}
    base, recoloured, tinted = feats
    for m in (0, 2):
        np.testing.assert_allclose(recoloured[at[m]], base[at[m]], rtol=1e-5, atol=1e-6)
        # Only the edge pixels, part object and part background, see the tint (differences
        # from the background, as the whole scene's input, would move by about 0.3).
        assert _relative(tinted[at[m]], base[at[m]]) < 0.1
    assert _relative(recoloured[at[1]], base[at[1]]) > 0.3
    assert _relative(recoloured[0], base[0]) > 0.01 and _relative(tinted[0], base[0]) > 0.1


def test_region_cache_sits_beside_the_global_one(tmp_path, monkeypatch):
    monkeypatch.setenv("ITM_JAX_CACHE", str(tmp_path))
    cfg = {"name": "synthetic", "data_dir": "",
           "synthetic": {"seed": 1, "num_train": 8, "num_val": 4, "num_test": 4, "regions": 0}}
    regional = {**cfg, "synthetic": {**cfg["synthetic"], "regions": 4}}
    global_sources, region_sources = get_sources(cfg), get_sources(regional)
    assert sorted(os.listdir(tmp_path)) == ["synthetic-8-4-4-seed1",
                                            "synthetic-8-4-4-seed1-regions4"]
    assert global_sources["train"].feature_shape == (1024,)
    assert region_sources["train"].feature_shape == (4, 1024)
    assert image_dim(global_sources["train"]) == image_dim(region_sources["train"]) == 1024
    assert region_sources["test"].image(2)["image_feat"].shape == (4, 1024)
    np.testing.assert_allclose(region_sources["test"].image(2)["image_feat"][0],
                               global_sources["test"].image(2)["image_feat"], rtol=1e-5, atol=1e-6)
    # Both caches are used as they are, not regenerated.
    monkeypatch.setattr(F, "write_precomp", lambda *a, **k: pytest.fail("regenerated"))
    assert get_sources(cfg)["val"].feature_shape == (1024,)
    assert get_sources(regional)["val"].feature_shape == (4, 1024)


def test_one_data_dir_regenerates_for_the_other_form(tmp_path):
    cfg = {"name": "synthetic", "data_dir": str(tmp_path),
           "synthetic": {"seed": 1, "num_train": 8, "num_val": 4, "num_test": 4, "regions": 6}}
    assert get_sources(cfg)["test"].feature_shape == (6, 1024)
    cfg["synthetic"]["regions"] = 0
    assert get_sources(cfg)["test"].feature_shape == (1024,)
    assert json.loads((tmp_path / F.META_FILENAME).read_text())["feature_extractor"][
        "regions"] == 0


def test_eval_batches_stack_region_sets(tmp_path):
    cfg = {"name": "synthetic", "data_dir": str(tmp_path),
           "synthetic": {"seed": 1, "num_train": 8, "num_val": 4, "num_test": 5, "regions": 4}}
    test = get_sources(cfg)["test"]
    batches = list(eval_batches(test, batch_size=3, shard_index=0, shard_count=1))
    assert len(batches) == 2
    for b, batch in enumerate(batches):
        assert batch["image_feat"].dtype == np.float32 and batch["image_feat"].shape == (3, 4, 1024)
        for row in range(3):
            i = 3 * b + row
            if i < test.num_images:
                assert batch["mask"][row]
                np.testing.assert_array_equal(batch["image_feat"][row], test.image(i)["image_feat"])
            else:
                assert not batch["mask"][row] and not batch["image_feat"][row].any()


@pytest.mark.parametrize("regions", [1, 3, -1, 4.0, "4"])
def test_bad_regions_are_a_config_error(tmp_path, monkeypatch, regions):
    monkeypatch.setenv("ITM_JAX_CACHE", str(tmp_path))
    cfg = {"name": "synthetic", "data_dir": "",
           "synthetic": {"seed": 1, "num_train": 8, "num_val": 4, "num_test": 4,
                         "regions": regions}}
    with pytest.raises(ConfigError, match=r"regions must be 0 .* or at least 4 .*regions=4"):
        get_sources(cfg)
    assert os.listdir(tmp_path) == []


def test_extract_region_features_rejects_bad_input(splits):
    src = splits["test"]
    images, layouts = src.images(range(2)), [src.layout(i) for i in range(2)]
    with pytest.raises(ConfigError, match="regions must be at least 4"):
        F.extract_region_features(images, layouts, 0)
    with pytest.raises(ValueError, match="one layout per image: 2 images, 1 layouts"):
        F.extract_region_features(images, layouts[:1], 4)
    outside = layouts[0]._replace(centres=layouts[0].centres + 100)
    with pytest.raises(ValueError, match="centres must lie in the 64-pixel image"):
        F.extract_region_features(images, [outside, layouts[1]], 4)
