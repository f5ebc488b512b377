"""DualEncoder from config: every image/text/head combination maps a batch to the outputs the
objective reads, with the shapes and normalisation it promises."""

import numpy as np
import pytest
from flax import nnx

from itm_jax.models.dual_encoder import build_dual_encoder
from itm_jax.objective import objective

B, F, E, V, C = 3, 12, 16, 20, 5


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
    from itm_jax.train import model_outputs

    batch = {**_batch("precomp"), "image_id": np.arange(B), "label": np.arange(B)}
    total, terms = objective(model_outputs(model, batch, True), [{"name": "cmpm"}, {"name": "cmpc"}])
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
