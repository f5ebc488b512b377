"""Pretrained word vectors (GloVe / word2vec text files) as an embedding matrix for a vocabulary.

Rows of words missing from the file keep a random initialisation, uniform(-0.1, 0.1), the
initialisation of VSE++'s word embedding, so the text encoder trains them like any other.
Special tokens are never looked up in the file: ``<pad>`` is a zero row (padding contributes
nothing before masking), and ``<start>``, ``<end>``, ``<unk>`` keep the random init, because a
file's own entries for such strings (if any) mean something else.

Matching is exact first; for words the file has only in another case (the cased GloVe 840B,
word2vec GoogleNews), the first line whose lower-cased word equals the vocabulary word is used,
since our vocabulary is lower-cased.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
from tqdm import tqdm

from itm_jax.data.vocab import Vocabulary
from itm_jax.errors import DataError

_WHERE = (
    "GloVe text files come from https://nlp.stanford.edu/projects/glove/ (e.g. "
    "glove.840B.300d.txt); word2vec files must be in text format (gensim: "
    "KeyedVectors.load_word2vec_format(bin_path, binary=True).save_word2vec_format(txt_path, "
    "binary=False))."
)


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _parse_header(line: str) -> tuple[int, int] | None:
    """``(count, dim)`` when ``line`` is a word2vec text header, else None (a GloVe file)."""
    parts = line.split()
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        return int(parts[0]), int(parts[1])
    return None


def load_word_vectors(
    path: str | os.PathLike,
    vocab: Vocabulary,
    *,
    dim: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """Embedding matrix for ``vocab`` from a GloVe or word2vec text file.

    Formats (detected from the first line): GloVe, ``word v_1 ... v_d`` on every line;
    word2vec text, a ``count dim`` header line then the same lines. Lines whose word contains
    spaces (a few in GloVe 840B, e.g. ``. . .``) are skipped: tokenised words never contain
    spaces.

    Args:
      path: the vectors file (UTF-8 text).
      vocab: the vocabulary whose rows to fill.
      dim: expected vector size; ``None`` takes it from the file. A mismatch is an error.
      seed: seed of the uniform(-0.1, 0.1) init of rows not found in the file.

    Returns:
      ``matrix`` float32 ``[len(vocab), dim]`` and ``found``, the number of non-special
      vocabulary words that got a pretrained vector.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"No word-vector file at {path}. {_WHERE}")

    # The first file line giving each word a vector: exact match, then lower-cased match.
    wanted = {w: i for i, w in enumerate(vocab.words) if w not in Vocabulary.SPECIALS}
    exact: dict[int, str] = {}  # vocabulary id -> the line's unparsed values
    folded: dict[int, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
            header = _parse_header(first)
            if header is not None:
                count, file_dim = header
                lines = f
                first_lineno = 2
            else:
                count, file_dim = None, len(first.rstrip().split(" ")) - 1
                lines = itertools.chain([first], f)
                first_lineno = 1
            if file_dim < 1:
                raise DataError(f"{path}: first line has no vector values. {_WHERE}")
            if dim is not None and dim != file_dim:
                raise DataError(
                    f"{path} holds {file_dim}-dimensional vectors but dim={dim} was requested "
                    f"(config.model.word_dim): request {file_dim}, or use a {dim}-d file."
                )
            n_vectors = 0
            for lineno, line in enumerate(
                tqdm(lines, desc="Reading word vectors", unit="line", total=count, leave=False),
                start=first_lineno,
            ):
                line = line.rstrip()
                if not line:
                    continue
                n_vectors += 1
                n_values = line.count(" ")
                if n_values != file_dim:
                    parts = line.split(" ")
                    extra = parts[1 : len(parts) - file_dim]
                    if n_values < file_dim or all(_is_number(p) for p in extra):
                        raise DataError(
                            f"{path}, line {lineno}: {len(parts) - 1} values after the word, "
                            f"expected {file_dim} like the "
                            f"{'header' if header else 'first line'}, so the file is "
                            "truncated or mixes dimensions: download it again."
                        )
                    continue  # a multi-word entry, which no tokenised word can equal
                word, values = line.split(" ", 1)
                i = wanted.get(word)
                if i is not None:
                    exact.setdefault(i, values)
                    continue
                i = wanted.get(word.lower())
                if i is not None:
                    folded.setdefault(i, values)
    except UnicodeDecodeError:
        raise DataError(
            f"{path} is not UTF-8 text; binary word2vec files are not read. {_WHERE}"
        ) from None
    if count is not None and n_vectors != count:
        raise DataError(
            f"{path}: the word2vec header announces {count} vectors but the file has "
            f"{n_vectors}, so the file is truncated or the header is wrong: download it again."
        )

    rng = np.random.default_rng(seed)
    matrix = rng.uniform(-0.1, 0.1, size=(len(vocab), file_dim)).astype(np.float32)
    matrix[Vocabulary.PAD_ID] = 0.0
    for i, values in {**folded, **exact}.items():
        try:
            matrix[i] = np.array(values.split(" "), dtype=np.float32)
        except ValueError:
            raise DataError(
                f"{path}: the vector of {vocab.word(i)!r} has non-numeric values, so the file "
                "is damaged: download it again."
            ) from None
    return matrix, len(folded.keys() | exact.keys())
