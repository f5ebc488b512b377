"""Pretrained word vectors: GloVe and word2vec text formats, init of missing rows, errors."""

import numpy as np
import pytest

from itm_jax.data.vocab import Vocabulary
from itm_jax.data.word_vectors import load_word_vectors
from itm_jax.errors import DataError

VOCAB = Vocabulary(["dog", "cat", "zebra", "paris"], threshold=1)
VECS = {"dog": [1.0, 2.0, 3.0], "cat": [-0.5, 0.25, 4.0], "paris": [7.0, 8.0, 9.0]}


def _lines(vectors):
    return [f"{w} " + " ".join(str(v) for v in vec) for w, vec in vectors.items()]


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _check(matrix, found, *, dim=3):
    assert matrix.shape == (len(VOCAB), dim) and matrix.dtype == np.float32
    assert found == 3
    for w, vec in VECS.items():
        np.testing.assert_array_equal(matrix[VOCAB.id(w)], np.float32(vec))
    np.testing.assert_array_equal(matrix[VOCAB.PAD_ID], 0.0)
    # zebra and <start>/<end>/<unk> keep the uniform(-0.1, 0.1) init.
    rest = matrix[[VOCAB.START_ID, VOCAB.END_ID, VOCAB.UNK_ID, VOCAB.id("zebra")]]
    assert (np.abs(rest) <= 0.1).all() and (rest != 0).all()


def test_glove(tmp_path):
    lines = ["the 0.1 0.2 0.3", *_lines(VECS), "horse 1 1 1"]
    _check(*load_word_vectors(_write(tmp_path / "g.txt", lines), VOCAB))


def test_word2vec_text(tmp_path):
    lines = ["5 3", "the 0.1 0.2 0.3", *_lines(VECS), "horse 1 1 1"]
    _check(*load_word_vectors(_write(tmp_path / "w.txt", lines), VOCAB, dim=3))


def test_case_folding_exact_match_wins(tmp_path):
    lines = [
        "Dog 9 9 9",  # cased only: used for "dog" unless an exact line exists
        "dog 1 2 3",
        "CAT -0.5 0.25 4",
        "Paris 7 8 9",
        "PARIS 0 0 0",  # a later folded duplicate does not replace the first
    ]
    _check(*load_word_vectors(_write(tmp_path / "g.txt", lines), VOCAB))


def test_special_tokens_are_not_looked_up(tmp_path):
    lines = ["<unk> 5 5 5", "<pad> 5 5 5", *_lines(VECS)]
    matrix, found = load_word_vectors(_write(tmp_path / "g.txt", lines), VOCAB)
    assert found == 3
    assert (matrix[VOCAB.PAD_ID] == 0).all() and (np.abs(matrix[VOCAB.UNK_ID]) <= 0.1).all()


def test_random_init_is_seeded(tmp_path):
    path = _write(tmp_path / "g.txt", _lines(VECS))
    a, _ = load_word_vectors(path, VOCAB, seed=1)
    b, _ = load_word_vectors(path, VOCAB, seed=1)
    c, _ = load_word_vectors(path, VOCAB, seed=2)
    np.testing.assert_array_equal(a, b)
    zebra = VOCAB.id("zebra")
    assert not np.array_equal(a[zebra], c[zebra])


def test_multi_word_entries_are_skipped(tmp_path):
    # GloVe 840B has entries such as ". . ." whose word contains spaces.
    lines = [*_lines(VECS), "dog . . 1 1 1", "at name@x.com 2 2 2"]
    _check(*load_word_vectors(_write(tmp_path / "g.txt", lines), VOCAB))


def _data_error(path, match, **kwargs):
    """The one-line DataError of ``load_word_vectors(path, VOCAB)``, which must name ``path``."""
    with pytest.raises(DataError, match=match) as e:
        load_word_vectors(path, VOCAB, **kwargs)
    message = str(e.value)
    assert str(path) in message and "\n" not in message
    return message


def test_missing_file(tmp_path):
    _data_error(tmp_path / "glove.txt", "No word-vector file.*nlp.stanford.edu/projects/glove")


def test_dim_mismatch_with_request(tmp_path):
    path = _write(tmp_path / "g.txt", _lines(VECS))
    _data_error(path, "3-dimensional vectors but dim=300.*request 3", dim=300)


@pytest.mark.parametrize("bad_line", ["cat 1 2", "cat 1 2 3 4"])
def test_inconsistent_dimensions(tmp_path, bad_line):
    path = _write(tmp_path / "g.txt", ["dog 1 2 3", "zebra 0 0 0", bad_line])
    _data_error(path, "line 3: .* expected 3.*truncated")


def test_truncated_last_line(tmp_path):
    path = tmp_path / "g.txt"
    path.write_text("\n".join(_lines(VECS))[:-3], encoding="utf-8")  # a download cut short
    _data_error(path, "line 3: 2 values after the word, expected 3.*download it again")


def test_word2vec_header_count_mismatch(tmp_path):
    path = _write(tmp_path / "w.txt", ["10 3", *_lines(VECS)])
    _data_error(path, "announces 10 vectors but the file has 3.*truncated")


def test_binary_file_is_rejected(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"2 3\ndog " + np.float32([1, 2, 3]).tobytes() + b"\xff\xfe\n")
    _data_error(path, "binary word2vec")


def test_non_numeric_vector(tmp_path):
    path = _write(tmp_path / "g.txt", ["dog 1 2 3", "cat 1 x 3"])
    _data_error(path, "'cat' has non-numeric")
