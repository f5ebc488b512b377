"""Tokenisation, vocabulary building, JSON round trip and caption encoding."""

import json

import numpy as np
import pytest

from itm_jax.data.source import CaptionedSource
from itm_jax.data.vocab import Vocabulary, build_vocab_for, tokenize
from itm_jax.errors import DataError


@pytest.mark.parametrize(
    "caption, tokens",
    [
        ("A man riding a Horse.", ["a", "man", "riding", "a", "horse", "."]),
        ("Two dogs, playing!", ["two", "dogs", ",", "playing", "!"]),
        ("The dog's ball isn't red", ["the", "dog", "'s", "ball", "is", "n't", "red"]),
        ("They're here, we've gone, I'll go, I'd stay, I'm", [
            "they", "'re", "here", ",", "we", "'ve", "gone", ",", "i", "'ll", "go", ",",
            "i", "'d", "stay", ",", "i", "'m",
        ]),
        ("can't won't", ["ca", "n't", "wo", "n't"]),
        ("a 3.5 ft pole and 1,000 birds", ["a", "3.5", "ft", "pole", "and", "1,000", "birds"]),
        ("a black-and-white cat at 5 o'clock", ["a", "black-and-white", "cat", "at", "5",
                                                "o'clock"]),
        ("the dogs' bowls", ["the", "dogs", "'", "bowls"]),
        ("wait... what -- no (ok)?", ["wait", "...", "what", "--", "no", "(", "ok", ")", "?"]),
        ("  tabs\tand\nnewlines  ", ["tabs", "and", "newlines"]),
        ("Café Crème", ["café", "crème"]),
        ("", []),
    ],
)
def test_tokenize(caption, tokens):
    assert tokenize(caption) == tokens


CAPTIONS = [
    "a dog runs",
    "a dog sits",
    "a cat sits",
    "the dog barks",
    "a bird flies",
]  # counts: a 4, dog 3, sits 2, others 1


def test_build_threshold_and_order():
    vocab = Vocabulary.build(CAPTIONS, threshold=2)
    assert vocab.words == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "sits"]
    assert len(vocab) == 7
    assert vocab.threshold == 2
    one = Vocabulary.build(CAPTIONS, threshold=1)
    # Count 1 words follow by alphabetical order after the frequent ones.
    assert one.words[4:] == ["a", "dog", "sits", "barks", "bird", "cat", "flies", "runs", "the"]
    assert Vocabulary.build(CAPTIONS, threshold=5).words == list(Vocabulary.SPECIALS)


def test_build_is_independent_of_caption_order():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(30)]
    captions = [" ".join(rng.choice(words, size=6)) for _ in range(200)]
    a = Vocabulary.build(captions, threshold=3)
    b = Vocabulary.build(list(reversed(captions)), threshold=3)
    assert a == b and len(a) > 4


def test_special_ids_and_lookup():
    vocab = Vocabulary.build(CAPTIONS, threshold=2)
    assert [vocab.id(w) for w in Vocabulary.SPECIALS] == [0, 1, 2, 3]
    assert (vocab.PAD_ID, vocab.START_ID, vocab.END_ID, vocab.UNK_ID) == (0, 1, 2, 3)
    assert vocab.id("dog") == 5 and vocab.word(5) == "dog"
    assert vocab.id("zebra") == vocab.UNK_ID
    assert "dog" in vocab and "zebra" not in vocab and "<unk>" in vocab
    with pytest.raises(IndexError, match="outside the vocabulary"):
        vocab.word(len(vocab))
    with pytest.raises(ValueError, match="threshold"):
        Vocabulary.build(CAPTIONS, threshold=0)


def test_save_load_round_trip(tmp_path):
    vocab = Vocabulary.build(CAPTIONS + ["Ünïcode wörds wörds wörds wörds"], threshold=2)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["version"] == 1 and payload["threshold"] == 2
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.id("wörds") == vocab.id("wörds") != vocab.UNK_ID


@pytest.mark.parametrize(
    "content, match",
    [
        ("not json", "not a vocabulary JSON"),
        ("[1, 2]", "format"),
        ('{"format": "itm_jax.vocab", "version": 99, "threshold": 4, "words": []}', "version"),
        ('{"format": "itm_jax.vocab", "version": 1, "threshold": "4", '
         '"words": ["<pad>", "<start>", "<end>", "<unk>"]}', "threshold"),
        ('{"format": "itm_jax.vocab", "version": 1, "threshold": 4, "words": ["a", "b"]}',
         "must start with"),
        ('{"format": "itm_jax.vocab", "version": 1, "threshold": 4, '
         '"words": ["<pad>", "<start>", "<end>", "<unk>", "a", "a"]}', "unique"),
    ],
)
def test_load_malformed(tmp_path, content, match):
    path = tmp_path / "vocab.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match) as e:
        Vocabulary.load(path)
    assert str(path) in str(e.value) and "build_vocab_for" in str(e.value)
    assert "\n" not in str(e.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(DataError, match="No vocabulary file.*build_vocab_for") as e:
        Vocabulary.load(tmp_path / "nope.json")
    assert str(tmp_path / "nope.json") in str(e.value) and "\n" not in str(e.value)


def test_encode_padding_unknown_and_length():
    vocab = Vocabulary.build(CAPTIONS, threshold=2)
    tokens, length = vocab.encode("A zebra sits.", max_len=8)
    a, sits, unk = vocab.id("a"), vocab.id("sits"), vocab.UNK_ID
    # "." and "zebra" are not in the vocabulary.
    np.testing.assert_array_equal(tokens, [1, a, unk, sits, unk, 2, 0, 0])
    assert tokens.dtype == np.int32 and tokens.shape == (8,)
    assert length == 6 and length.dtype == np.int32


def test_encode_exact_fit_and_truncation():
    vocab = Vocabulary.build(CAPTIONS, threshold=1)
    ids = [vocab.id(w) for w in ("a", "dog", "runs")]
    tokens, length = vocab.encode("a dog runs", max_len=5)
    np.testing.assert_array_equal(tokens, [1, *ids, 2])
    assert length == 5
    tokens, length = vocab.encode("a dog runs", max_len=4)
    np.testing.assert_array_equal(tokens, [1, *ids[:2], 2])
    assert length == 4
    tokens, length = vocab.encode("", max_len=3)
    np.testing.assert_array_equal(tokens, [1, 2, 0])
    assert length == 2
    with pytest.raises(ValueError, match="max_len"):
        vocab.encode("a dog", max_len=1)


def test_encode_batch_matches_encode():
    vocab = Vocabulary.build(CAPTIONS, threshold=1)
    captions = ["a dog runs", "the cat", "a bird flies over the dog that sits"]
    tokens, lengths = vocab.encode_batch(captions, max_len=6)
    assert tokens.shape == (3, 6) and tokens.dtype == np.int32
    assert lengths.dtype == np.int32
    np.testing.assert_array_equal(lengths, [5, 4, 6])
    for i, c in enumerate(captions):
        t, n = vocab.encode(c, 6)
        np.testing.assert_array_equal(tokens[i], t)
        assert lengths[i] == n
    # Pad positions are exactly those past the length.
    assert ((tokens != 0) == (np.arange(6) < lengths[:, None])).all()


class _ListSource:
    """Minimal CaptionedSource: one image per caption."""

    def __init__(self, captions):
        self.captions = captions

    num_images = property(lambda self: len(self.captions))
    num_captions = property(lambda self: len(self.captions))
    cap_to_img = property(lambda self: np.arange(len(self.captions)))

    def image(self, index):
        return {"image_feat": np.zeros(2, np.float32), "image_id": index, "label": index}

    def caption(self, index):
        return {"caption": self.captions[index], "caption_id": index}


def test_build_vocab_for_source():
    source = _ListSource(CAPTIONS)
    assert isinstance(source, CaptionedSource)
    assert build_vocab_for(source, threshold=2) == Vocabulary.build(CAPTIONS, threshold=2)
    # Default threshold is VSE++'s 4.
    assert build_vocab_for(source).words == [*Vocabulary.SPECIALS, "a"]
