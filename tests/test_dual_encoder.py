"""DualEncoder from config: every image/text/head combination maps a batch to the outputs the
objective reads, with the shapes and normalisation it promises."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from itm_jax.models.dual_encoder import build_dual_encoder
from itm_jax.models.heads import DualPathHead, ProjectionHead1x1
from itm_jax.models.text import TextCNN
from itm_jax.objective import objective

B, F, E, V, C = 3, 12, 16, 20, 5

# Tiny models: compiling dominates, so XLA's optimisation passes are skipped (conftest).
pytestmark = pytest.mark.usefixtures("skip_xla_optimizations")


def _batch(image: str):
    rng = np.random.default_rng(0)
    batch = {"tokens": np.array([[1, 5, 2, 0], [1, 6, 7, 2], [1, 2, 0, 0]], np.int32),
             "length": np.array([3, 4, 2], np.int32)}
    if image == "precomp":
        batch["image_feat"] = rng.normal(size=(B, F)).astype(np.float32)
    else:
        batch["image"] = rng.normal(size=(B, 32, 32, 3)).astype(np.float32)
    return batch


def _cfg(**kw):
    return {"image": "precomp", "text": "gru", "embed_dim": E, "word_dim": 8, "small_cnn_dim": 8,
            "max_len": 8, **kw}


@pytest.mark.parametrize("image,text,classifier,head,normalize", [
    ("precomp", "gru", "none", False, True),
    ("precomp", "gru", "none", True, True),            # ConVSE
    ("precomp", "bilstm_mean", "none", False, True),   # IMC
    ("precomp", "bilstm_max", "norm", False, False),   # CMPM + CMPC
    ("small_cnn", "text_cnn", "shared", False, True),  # dual-path
])
def test_outputs(image, text, classifier, head, normalize):
    model = build_dual_encoder(
        _cfg(image=image, text=text, classifier=classifier, convse_head=head, normalize=normalize),
        vocab_size=V, num_classes=C, image_dim=F, rngs=nnx.Rngs(0))
    out = model(_batch(image))
    assert out["img_feat"].shape == out["txt_feat"].shape == (B, E)
    norms = np.linalg.norm(np.asarray(out["img_feat"]), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5) == normalize
    if classifier == "shared":
        assert out["img_logits"].shape == out["txt_logits"].shape == (B, C)
    if classifier == "norm":
        assert out["cls_weight"].shape == (E, C)
    assert (model.img_head is not None) == head


def test_objective_reads_the_outputs():
    model = build_dual_encoder(_cfg(text="bilstm_max", classifier="norm", normalize=False),
                               vocab_size=V, num_classes=C, image_dim=F, rngs=nnx.Rngs(0))
    from itm_jax.training.step import model_outputs

    batch = {**_batch("precomp"), "image_id": np.arange(B), "label": np.arange(B)}
    total, terms = objective(model_outputs(model, batch, use_id_positives=True), [{"name": "cmpm"}, {"name": "cmpc"}])
    assert np.isfinite(total) and set(terms) == {"cmpm", "cmpc"}


@pytest.mark.parametrize("field,value", [("image", "vit"), ("text", "bert"), ("classifier", "x")])
def test_unknown_choices(field, value):
    with pytest.raises(ValueError, match=f"model.{field}"):
        build_dual_encoder(_cfg(**{field: value}), vocab_size=V, num_classes=C, image_dim=F,
                           rngs=nnx.Rngs(0))


def test_missing_sizes():
    with pytest.raises(ValueError, match="image_dim"):
        build_dual_encoder(_cfg(), vocab_size=V, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="num_classes"):
        build_dual_encoder(_cfg(classifier="shared"), vocab_size=V, image_dim=F, rngs=nnx.Rngs(0))


# ----- model options (config.model fields; defaults keep the plain builder) ---------------------
def _params(model):
    return nnx.to_flat_state(nnx.state(model, nnx.Param))


def _count(model, *path):
    for key in path:
        model = getattr(model, key)
    return sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("image,text", [("precomp", "gru"), ("precomp", "bilstm_mean"),
                                        ("small_cnn", "bilstm_max"), ("small_cnn", "text_cnn")])
def test_option_defaults_keep_the_model(image, text):
    plain = build_dual_encoder(_cfg(image=image, text=text), vocab_size=V, image_dim=F,
                               rngs=nnx.Rngs(0))
    explicit = build_dual_encoder(
        _cfg(image=image, text=text, text_hidden=0, text_dropout=0.0, image_dropout=0.0,
             text_cnn="small", image_head="linear", text_head="none"),
        vocab_size=V, image_dim=F, rngs=nnx.Rngs(0))
    a, b = _params(plain), _params(explicit)
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x[...], y[...], err_msg=str(path))
    assert isinstance(getattr(plain.image_encoder, "fc"), nnx.Linear)
    assert plain.txt_head is None


def test_cmpm_bilstm_units_and_projection_heads():
    # CMPM at paper size: 512 LSTM units per direction on 512-d words (1024-d max-pooled), then
    # one 1x1 conv + BatchNorm to 512 on each branch (authors' build_joint_embeddings). ResNet-50
    # stands in for ResNet-152 (the same 2048-d pooled features, a fifth of the tracing).
    cfg = _cfg(image="resnet50", text="bilstm_max", embed_dim=512, word_dim=512, text_hidden=512,
               image_head="projection_1x1", text_head="projection_1x1", normalize=False)
    model = nnx.eval_shape(lambda: build_dual_encoder(cfg, vocab_size=V, rngs=nnx.Rngs(0)))
    assert (model.text_encoder.hidden, model.text_encoder.out_dim) == (512, 1024)
    # Per direction: 4 gates x (512 x 512 input + 512 x 512 recurrent + 512 bias), as TF's
    # BasicLSTMCell kernel [1024, 2048] + bias [2048].
    assert _count(model, "text_encoder", "forward_rnn") == 4 * (2 * 512 * 512 + 512) == 2_099_200
    assert _count(model, "text_encoder", "backward_rnn") == 2_099_200
    assert isinstance(model.image_encoder.fc, ProjectionHead1x1)
    assert (model.image_encoder.fc.in_dim, model.image_encoder.fc.out_dim) == (2048, 512)
    assert (model.txt_head.in_dim, model.txt_head.out_dim) == (1024, 512)
    assert _count(model, "txt_head") == 1024 * 512 + 2 * 512
    assert _count(model, "image_encoder", "fc") == 2048 * 512 + 2 * 512
    # ResNet arg scope (decay 0.997, epsilon 1e-5) for ResNets, MobileNet's for MobileNet.
    for head in (model.image_encoder.fc, model.txt_head):
        assert (head.bn.momentum, head.bn.epsilon) == (0.997, 1e-5)
    mobile = nnx.eval_shape(lambda: build_dual_encoder(
        {**cfg, "image": "mobilenet"}, vocab_size=V, rngs=nnx.Rngs(0)))
    assert mobile.image_encoder.fc.in_dim == 1024
    for head in (mobile.image_encoder.fc, mobile.txt_head):
        assert (head.bn.momentum, head.bn.epsilon) == (0.9997, 1e-3)


def test_cmpm_heads_are_trained_with_batch_statistics():
    cfg = _cfg(image="small_cnn", text="bilstm_max", text_hidden=12, image_head="projection_1x1",
               text_head="projection_1x1", normalize=False)
    model = build_dual_encoder(cfg, vocab_size=V, rngs=nnx.Rngs(0))
    out = model(_batch("small_cnn"))
    assert out["img_feat"].shape == out["txt_feat"].shape == (B, E)
    for feat in (out["img_feat"], out["txt_feat"]):  # BatchNorm output, no activation
        np.testing.assert_allclose(np.asarray(feat).mean(axis=0), 0.0, atol=1e-5)
    assert np.abs(np.asarray(model.txt_head.bn.mean[...])).max() > 0  # running stats moved
    model.eval()
    first = model(_batch("small_cnn"))["txt_feat"]
    np.testing.assert_array_equal(first, model(_batch("small_cnn"))["txt_feat"])


def test_dual_path_paper_size_text_cnn_and_image_head():
    cfg = _cfg(image="resnet50", text="text_cnn", embed_dim=2048, word_dim=300, max_len=32,
               text_cnn="paper", image_head="dual_path", text_dropout=0.75, image_dropout=0.75,
               classifier="shared", normalize=False)
    model = nnx.eval_shape(lambda: build_dual_encoder(cfg, vocab_size=V, num_classes=29_783,
                                                      rngs=nnx.Rngs(0)))
    paper = nnx.eval_shape(lambda: TextCNN.paper(V, rngs=nnx.Rngs(0)))
    assert [p for p, _ in _params(model.text_encoder)] == [p for p, _ in _params(paper)]
    assert _count(model, "text_encoder") == _count(paper)
    assert model.text_encoder.dropout.rate == 0.75
    head = model.image_encoder.fc
    assert isinstance(head, DualPathHead) and head.dropout.rate == 0.75
    # Sec. III-A: fc 2048 -> 2048, BN, ReLU, fc 2048 -> 2048 (+ the code's BN), bias-free.
    assert _count(model, "image_encoder", "fc") == 2 * 2048 * 2048 + 2 * 2 * 2048
    # W_share: 2,048 x 29,783 with bias (Sec. IV-B).
    assert _count(model, "classifier") == 2048 * 29_783 + 29_783


@pytest.mark.parametrize("text", ["bilstm_mean", "bilstm_max", "text_cnn"])
def test_text_dropout_changes_training_outputs_only(text):
    kw = {"text": text, "image": "small_cnn", "normalize": False}
    model = build_dual_encoder(_cfg(**kw, text_dropout=0.5), vocab_size=V, rngs=nnx.Rngs(0))
    plain = build_dual_encoder(_cfg(**kw), vocab_size=V, rngs=nnx.Rngs(0))
    batch = _batch("small_cnn")
    if text == "text_cnn":  # the position shift is random in training too; it is tested alone
        for m in (model, plain):
            m.text_encoder.deterministic = True
    a, b = model.embed_captions(batch), model.embed_captions(batch)
    assert not np.allclose(a, b)
    # Two training calls each, so that the text CNN's BatchNorm statistics (before the
    # dropout) agree; with the same weights, training without dropout gives other outputs.
    plain.embed_captions(batch)
    assert not np.allclose(a, plain.embed_captions(batch))
    model.eval()
    plain.eval()
    np.testing.assert_array_equal(model.embed_captions(batch), model.embed_captions(batch))
    np.testing.assert_allclose(model.embed_captions(batch), plain.embed_captions(batch),
                               rtol=1e-5, atol=1e-6)


def test_image_dropout_changes_training_outputs_only():
    kw = {"image": "small_cnn", "image_head": "dual_path", "normalize": False}
    model = build_dual_encoder(_cfg(**kw, image_dropout=0.5), vocab_size=V, rngs=nnx.Rngs(0))
    batch = _batch("small_cnn")
    assert not np.allclose(model.embed_images(batch), model.embed_images(batch))
    model.eval()
    np.testing.assert_array_equal(model.embed_images(batch), model.embed_images(batch))


@pytest.mark.parametrize("kw,match", [
    ({"image_head": "mlp"}, "model.image_head"),
    ({"text_head": "mlp"}, "model.text_head"),
    ({"text": "text_cnn", "text_cnn": "big"}, "model.text_cnn"),
    ({"image_head": "dual_path"}, "precomp"),
    ({"image": "small_cnn", "image_dropout": 0.5}, "image_dropout"),
    ({"text_dropout": 0.5}, "GRU"),
    ({"text": "text_cnn", "text_hidden": 8}, "text_hidden"),
    ({"text_cnn": "paper"}, "model.text='text_cnn'"),
    ({"text": "bilstm_max", "text_head": "projection_1x1", "convse_head": True}, "choose one"),
    ({"text": "bilstm_mean", "text_hidden": 8}, "text_head='projection_1x1'"),
])
def test_bad_option_combinations(kw, match):
    with pytest.raises(ValueError, match=re.escape(match)):
        build_dual_encoder(_cfg(**kw), vocab_size=V, image_dim=F, rngs=nnx.Rngs(0))
