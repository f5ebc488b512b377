"""The authors' SCAN / BFAN / VSRN checkpoints converted into our models
(`itm_jax.models.pretrained.load_authors_weights`, `convert_weights --vocab`): state_dicts with
the authors' parameter names, in PyTorch's layouts, written as `convert_weights` writes them
(`img_enc.*`, `txt_enc.*`); the converted models' embeddings against the float64 NumPy
references of PyTorch's modules (`numpy_refs_models_enc`); bad checkpoints and vocabularies."""

from __future__ import annotations

import pickle

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import numpy_refs_models_enc as ref
from itm_jax.experiment import load_pretrained
from itm_jax.models import convert_weights as cw
from itm_jax.models.dual_encoder import build_dual_encoder
from itm_jax.models.pretrained import authors_names, load_authors_weights
from test_models_regions import rand_bn, rand_gru, rand_linear, word_batch

pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")

V, WORD, FEAT, DIM = 30, 5, 7, 8  # vocabulary, word size, region features, joint space
B, N = 3, 5


def model_config(image, **extra):
    text = "bigru_words" if image == "regions" else "gru"
    return ml_collections.ConfigDict(dict(
        image=image, text=text, embed_dim=DIM, word_dim=WORD, scorer="scan" if image ==
        "regions" else "dot", scan=dict(direction="t2i", raw_feature_norm="clipped_l2norm",
                                        agg="mean", lambda_softmax=9.0, lambda_lse=6.0),
        **extra))


def build(image, **extra):
    return build_dual_encoder(model_config(image, **extra), vocab_size=V, image_dim=FEAT,
                              rngs=nnx.Rngs(0))


def scan_state(seed):
    """SCAN's / BFAN's two state_dicts: ``EncoderImagePrecomp``, bi-GRU ``EncoderText``."""
    rng = np.random.default_rng(seed)
    img, txt = {}, {"embed.weight": rng.uniform(-1, 1, (V, WORD))}
    rand_linear(rng, img, "fc.", DIM, FEAT)
    rand_gru(rng, txt, "rnn.", WORD, DIM)
    rand_gru(rng, txt, "rnn.", WORD, DIM, "_reverse")
    return img, txt


def vsrn_state(seed, variant):
    """VSRN's two state_dicts: ``EncoderImagePrecompAttn`` (C' = E, as VSRN), VSE++'s GRU."""
    rng = np.random.default_rng(seed)
    img, txt = {}, {"embed.weight": rng.uniform(-1, 1, (V, WORD))}
    rand_linear(rng, img, "fc.", DIM, FEAT)
    for k in range(1, 5):
        for name in ("g", "theta", "phi"):
            rand_linear(rng, img, f"Rs_GCN_{k}.{name}.", DIM, DIM, conv=True, scale=0.8)
        rand_linear(rng, img, f"Rs_GCN_{k}.W.0.", DIM, DIM, conv=True, scale=0.8)
        rand_bn(rng, img, f"Rs_GCN_{k}.W.1.", DIM)
        img[f"Rs_GCN_{k}.W.1.num_batches_tracked"] = np.array(7)
    rand_gru(rng, img, "img_rnn.", DIM, DIM)
    if variant == "f30k":
        rand_bn(rng, img, "bn.", DIM)
    rand_gru(rng, txt, "rnn.", WORD, DIM)
    return img, txt


def checkpoint(tmp_path, img, txt, name="model.npz"):
    arrays = {**{f"img_enc.{k}": v for k, v in img.items()},
              **{f"txt_enc.{k}": v for k, v in txt.items()}}
    return cw.write_npz({k: np.asarray(v, np.float32) for k, v in arrays.items()},
                        tmp_path / name)


def regions(seed):
    return np.random.default_rng(seed).normal(size=(B, N, FEAT))


def vse_gru_caption(tokens, lengths, sd):
    """The authors' ``EncoderText``: the GRU's state after each caption's last word, l2-normed."""
    table = np.asarray(sd["embed.weight"], np.float64)
    out = [ref.gru(table[t[:n]], sd, "rnn.")[1] for t, n in zip(tokens, lengths)]
    return ref.l2n(np.stack(out))


def test_scan_checkpoint_gives_the_authors_regions_and_words(tmp_path):
    img, txt = scan_state(0)
    model = build("regions")
    load_authors_weights(model, checkpoint(tmp_path, img, txt))
    x = regions(1)
    np.testing.assert_allclose(model.embed_images({"image_feat": jnp.asarray(x, jnp.float32)}),
                               ref.region_projection(x, img), rtol=1e-5, atol=1e-6)
    tokens, lengths = word_batch()
    words = model.embed_captions({"tokens": tokens, "length": lengths})
    np.testing.assert_allclose(words["words"], ref.bigru_words(tokens, lengths, txt), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("variant", ["coco", "f30k"])
@pytest.mark.parametrize("gru_impl", ["scan", "packed"])
def test_vsrn_checkpoint_gives_the_authors_embeddings(tmp_path, variant, gru_impl):
    """Eval mode (the authors evaluate so); the caption GRU is PyTorch's, recurrent biases
    included, in both of our GRU implementations."""
    img, txt = vsrn_state(2, variant)
    model = build("vsrn", vsrn_variant=variant, gru_impl=gru_impl)
    load_authors_weights(model, checkpoint(tmp_path, img, txt))
    model.eval()
    x = regions(3)
    emb, _, _ = ref.vsrn_image_encoder(x, img, variant, train=False)
    np.testing.assert_allclose(model.embed_images({"image_feat": jnp.asarray(x, jnp.float32)}),
                               emb, rtol=1e-4, atol=1e-5)
    tokens, lengths = word_batch()
    np.testing.assert_allclose(model.embed_captions({"tokens": tokens, "length": lengths}),
                               vse_gru_caption(tokens, lengths, txt), rtol=1e-4, atol=1e-5)


def test_vsrn_names_cover_both_encoders_not_the_caption_branch():
    model = build("vsrn", vsrn_variant="f30k", caption_generator=True)
    table = authors_names(model)
    img, txt = vsrn_state(0, "f30k")
    expected = {f"img_enc.{k}": np.shape(v) for k, v in img.items()
                if not k.endswith("num_batches_tracked")}
    expected.update({f"txt_enc.{k}": np.shape(v) for k, v in txt.items()})
    assert {k: shape for k, (_, _, shape) in table.items()} == expected
    assert not any(path[0] == "caption_generator" for path, _, _ in table.values())


def test_experiment_model_pretrained_loads_the_authors_weights(tmp_path):
    img, txt = scan_state(4)
    model = build("regions")
    load_pretrained(model, str(checkpoint(tmp_path, img, txt)))
    np.testing.assert_allclose(model.image_encoder.fc.kernel[...], img["fc.weight"].T, rtol=1e-6)


def test_wrong_variant_or_model_or_file_says_what_to_fix(tmp_path):
    f30k = checkpoint(tmp_path, *vsrn_state(5, "f30k"))
    coco = build("vsrn", vsrn_variant="coco")
    before = np.asarray(coco.image_encoder.fc.kernel[...])
    with pytest.raises(ValueError, match=r"vsrn_variant='coco'.*\n.*unexpected keys: "
                       r"img_enc\.bn\.bias"):
        load_authors_weights(coco, f30k)
    np.testing.assert_array_equal(coco.image_encoder.fc.kernel[...], before)  # unchanged
    with pytest.raises(ValueError, match=r"(?s)missing keys: txt_enc.rnn.bias_hh_l0_reverse.*"
                       r"unexpected keys: img_enc.Rs_GCN_1.*Check model.image"):
        load_authors_weights(build("regions"), f30k)  # a VSRN checkpoint into SCAN
    with pytest.raises(ValueError, match=r"wrong shapes: txt_enc.embed.weight \(30, 5\) "
                       r"\(expected \(31, 5\)\).*\n.*vocab.json"):
        load_authors_weights(build_dual_encoder(model_config("vsrn", vsrn_variant="f30k"),
                                                vocab_size=V + 1, image_dim=FEAT,
                                                rngs=nnx.Rngs(0)), f30k)
    with pytest.raises(TypeError, match="model.image='regions' .* or 'vsrn'"):
        load_authors_weights(build("precomp"), f30k)
    with pytest.raises(FileNotFoundError, match=r"convert_weights scan\|bfan\|vsrn model_best"):
        load_authors_weights(coco, tmp_path / "absent.npz")


class Vocabulary:  # pickled under the authors' class name, as their vocab/*.pkl
    def __init__(self, words):
        self.idx2word = dict(enumerate(words))
        self.word2idx = {w: i for i, w in self.idx2word.items()}
        self.idx = len(words)


def test_authors_vocabulary_keeps_their_word_ids(tmp_path):
    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs"]
    path = tmp_path / "vocab.pkl"
    path.write_bytes(pickle.dumps(Vocabulary(words), protocol=2))
    vocab = cw.read_authors_vocab(path)
    assert vocab.words == words
    tokens, length = vocab.encode("A dog runs fast", max_len=8)
    np.testing.assert_array_equal(tokens[:length], [1, 4, 5, 6, 3, 2])

    path.write_bytes(pickle.dumps(Vocabulary(["a", "<pad>", "<start>", "<end>", "<unk>"])))
    with pytest.raises(ValueError, match="ids 0-3 are"):
        cw.read_authors_vocab(path)
    path.write_bytes(pickle.dumps(print))  # anything but a vocabulary is refused, not run
    with pytest.raises(ValueError, match="not the authors' vocabulary pickle"):
        cw.read_authors_vocab(path)
    with pytest.raises(ValueError, match="--vocab is for the authors'"):
        cw.convert("torchvision-resnet", path, tmp_path / "o.npz", vocab=path)
