"""Caption tokenisation and the word vocabulary of the GRU/LSTM text encoders.

Follows VSE++ (Faghri et al., ``vocab.py`` and ``data.py``): captions are lower-cased and
word-tokenised, words seen at least ``threshold`` times (4 in VSE++) in the *training*
captions form the vocabulary, every other word maps to ``<unk>``, and an encoded caption is
``[<start>, w_1, ..., w_n, <end>]``.

Tokenisation is a regular-expression equivalent of ``nltk.word_tokenize`` so that nltk and its
``punkt`` download are not needed. For captions it gives the same tokens as nltk's Treebank
tokenizer, with these differences, all rare in captions:

* ``"`` stays ``"`` (nltk rewrites opening/closing quotes as ``````/``''``);
* periods inside abbreviations are split (``u.s.`` -> ``u . s .``; nltk keeps ``u.s.``);
* ``cannot``, ``gonna``, ``wanna`` stay whole (nltk splits them into two tokens).

Like nltk: punctuation is one token per character (``...`` and ``--`` are single tokens),
numbers keep their decimal point and thousands separators (``3.5``, ``1,000``), hyphenated and
apostrophe-internal words stay whole (``black-and-white``, ``o'clock``), and the clitics
``n't 's 're 've 'll 'd 'm`` are split off (``don't`` -> ``do n't``, ``dog's`` -> ``dog 's``).
"""

from __future__ import annotations

import collections
import json
import os
import re
from typing import Any, Iterable, Sequence

import numpy as np
from tqdm import tqdm

from itm_jax.errors import DataError

# Order matters: numbers before words so "3.5" is one token, "..." and "--" before single chars.
_TOKEN_RE = re.compile(
    r"\d+(?:[.,]\d+)+"  # 3.5, 1,000, 10.000,5
    r"|\w+(?:[-']\w+)*"  # words, hyphenated words, o'clock, don't (clitic split below)
    r"|\.\.\.|--"
    r"|\S"  # any other non-space character is its own token
)
_CLITIC_RE = re.compile(r"^(\w.*?)(n't|'s|'re|'ve|'ll|'d|'m)$")

_FORMAT = "itm_jax.vocab"
_FORMAT_VERSION = 1

# Captions in a source at or above this count get a progress bar while counting words.
_PROGRESS_MIN_CAPTIONS = 10_000


def tokenize(caption: str) -> list[str]:
    """Lower-cased word tokens of ``caption`` (see the module docstring for the rules).

    >>> tokenize("A man's dog, 3.5 ft tall, doesn't bark!")
    ['a', 'man', "'s", 'dog', ',', '3.5', 'ft', 'tall', ',', 'does', "n't", 'bark', '!']
    """
    tokens = []
    for token in _TOKEN_RE.findall(caption.lower()):
        m = _CLITIC_RE.match(token)
        if m:
            tokens.extend(m.groups())
        else:
            tokens.append(token)
    return tokens


class Vocabulary:
    """Bidirectional word <-> id map with four reserved ids.

    ``<pad>`` is 0 so zero-padded token arrays need no separate mask value; ``<start>`` 1,
    ``<end>`` 2, ``<unk>`` 3; words follow from id 4.
    """

    PAD = "<pad>"
    START = "<start>"
    END = "<end>"
    UNK = "<unk>"
    SPECIALS = (PAD, START, END, UNK)
    PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

    def __init__(self, words: Sequence[str], *, threshold: int):
        """Vocabulary of ``SPECIALS + words`` in that id order.

        Args:
          words: the non-special words, in id order (id of ``words[k]`` is ``k + 4``).
          threshold: the minimum training count used to select ``words`` (kept for the record
            in ``save``).
        """
        words = list(words)
        clash = [w for w in words if w in self.SPECIALS]
        if clash:
            raise ValueError(f"Vocabulary words may not include the special tokens {clash}.")
        self._words = [*self.SPECIALS, *words]
        self._ids = {w: i for i, w in enumerate(self._words)}
        if len(self._ids) != len(self._words):
            dup = [w for w, n in collections.Counter(self._words).items() if n > 1]
            raise ValueError(f"Vocabulary words must be unique; repeated: {dup[:10]}.")
        self.threshold = int(threshold)

    @classmethod
    def build(cls, captions: Iterable[str], *, threshold: int = 4) -> Vocabulary:
        """Vocabulary of the words occurring at least ``threshold`` times in ``captions``.

        Build from the training split's captions only (see ``build_vocab_for``): words seen
        only in validation/test captions must map to ``<unk>``, as in every published result.

        Ids are assigned by descending count, ties broken alphabetically, so the same captions
        always give the same ids whatever their order.
        """
        if threshold < 1:
            raise ValueError(f"threshold must be >= 1, got {threshold}.")
        counts = collections.Counter()
        for caption in captions:
            counts.update(tokenize(caption))
        kept = [(-n, w) for w, n in counts.items() if n >= threshold and w not in cls.SPECIALS]
        return cls([w for _, w in sorted(kept)], threshold=threshold)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary as JSON: format name and version, threshold, words by id."""
        payload = {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "threshold": self.threshold,
            "words": self._words,
        }
        with open(path, "w", encoding="utf-8") as f:
            json.dump(payload, f, ensure_ascii=False, indent=0)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocabulary:
        """Reads a vocabulary written by ``save``."""
        try:
            with open(path, encoding="utf-8") as f:
                payload = json.load(f)
        except FileNotFoundError:
            raise DataError(
                f"No vocabulary file at {path}. Build one from the training split with "
                "itm_jax.data.vocab.build_vocab_for(train_source) and Vocabulary.save(path)."
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(
                f"{path} is not a vocabulary JSON file ({e}): rebuild it with "
                "build_vocab_for(train_source).save(path)."
            ) from None
        return cls._from_payload(payload, path)

    @classmethod
    def _from_payload(cls, payload: Any, path) -> Vocabulary:
        def bad(why):
            return DataError(
                f"{path} is not a valid itm_jax vocabulary: {why}. Rebuild it with "
                "build_vocab_for(train_source).save(path)."
            )

        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise bad(f'expected a JSON object with "format": "{_FORMAT}"')
        if payload.get("version") != _FORMAT_VERSION:
            raise bad(
                f"format version {payload.get('version')!r}, this code reads {_FORMAT_VERSION}"
            )
        threshold, words = payload.get("threshold"), payload.get("words")
        if not isinstance(threshold, int) or isinstance(threshold, bool):
            raise bad(f'"threshold" must be an integer, got {threshold!r}')
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise bad('"words" must be a list of strings')
        if tuple(words[: len(cls.SPECIALS)]) != cls.SPECIALS:
            raise bad(f'"words" must start with {list(cls.SPECIALS)}, got {words[:4]}')
        try:
            return cls(words[len(cls.SPECIALS) :], threshold=threshold)
        except ValueError as e:  # the constructor's checks: repeated or misplaced specials
            raise bad(str(e).rstrip(".")) from None

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._ids

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocabulary):
            return NotImplemented
        return self._words == other._words and self.threshold == other.threshold

    def __repr__(self) -> str:
        return f"Vocabulary(size={len(self)}, threshold={self.threshold})"

    @property
    def words(self) -> list[str]:
        """All words in id order, specials first (a copy)."""
        return list(self._words)

    def id(self, word: str) -> int:
        """Id of ``word``; ``<unk>``'s id (3) for words not in the vocabulary."""
        return self._ids.get(word, self.UNK_ID)

    def word(self, id: int) -> str:
        """The word with id ``id`` in ``[0, len(self))``."""
        id = int(id)
        if not 0 <= id < len(self._words):
            raise IndexError(f"Word id {id} is outside the vocabulary [0, {len(self._words)}).")
        return self._words[id]

    def encode(self, caption: str, max_len: int) -> tuple[np.ndarray, np.int32]:
        """Token ids of ``caption`` and its length.

        Args:
          caption: raw caption text (tokenised here).
          max_len: output length, >= 2; a caption with more than ``max_len - 2`` words is
            truncated, keeping ``<end>`` as the last token.

        Returns:
          ``tokens`` int32 ``[max_len]`` = ``[<start>, w_1, ..., w_n, <end>, 0, ...]`` and
          ``length`` int32 scalar, the number of non-pad tokens (``n + 2`` before truncation).
        """
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 to hold <start> and <end>, got {max_len}.")
        words = tokenize(caption)[: max_len - 2]
        ids = [self.START_ID, *(self._ids.get(w, self.UNK_ID) for w in words), self.END_ID]
        tokens = np.zeros(max_len, np.int32)
        tokens[: len(ids)] = ids
        return tokens, np.int32(len(ids))

    def encode_batch(
        self, captions: Sequence[str], max_len: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """``encode`` over captions: tokens int32 ``[N, max_len]``, lengths int32 ``[N]``."""
        tokens = np.zeros((len(captions), max_len), np.int32)
        lengths = np.zeros(len(captions), np.int32)
        for i, caption in enumerate(captions):
            tokens[i], lengths[i] = self.encode(caption, max_len)
        return tokens, lengths


def build_vocab_for(source, *, threshold: int = 4) -> Vocabulary:
    """Builds the vocabulary from every caption of a *training* split ``CaptionedSource``.

    Never pass a validation or test source (or one mixing splits): their words would get ids
    instead of ``<unk>``, leaking test vocabulary into the model and inflating results.

    Args:
      source: the training split; its ``caption(i)["caption"]`` strings are counted.
      threshold: minimum count for a word to get its own id (VSE++ uses 4).
    """
    n = source.num_captions
    captions = (source.caption(i)["caption"] for i in range(n))
    if n >= _PROGRESS_MIN_CAPTIONS:
        captions = tqdm(captions, total=n, desc="Counting caption words", unit="caption")
    return Vocabulary.build(captions, threshold=threshold)
