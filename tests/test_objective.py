import jax.numpy as jnp
import numpy as np
import pytest

import itm_jax.losses as L
from itm_jax.objective import _ARGUMENTS, objective, outputs_from_features, required_outputs


def _outputs(b=6, d=4, c=3):
    rng = np.random.default_rng(1)
    img, txt = rng.normal(size=(2, b, d)).astype(np.float32)
    ids = np.array([0, 0, 1, 2, 2, 2])[:b]
    w = rng.normal(size=(d, c)).astype(np.float32)
    return outputs_from_features(
        img, txt, image_ids=ids, labels=ids, cls_weight=w, img_logits=img @ w, txt_logits=txt @ w
    )


def test_every_registered_loss_is_routed():
    assert sorted(_ARGUMENTS) == sorted(L.names())


def test_weighted_sum_and_terms():
    out = _outputs()
    specs = [
        {"name": "cmpm", "weight": 1.0},
        {"name": "cmpc", "weight": 0.5},
        {"name": "max_of_hinges", "weight": 2.0, "margin": 0.1, "label": "mh"},
    ]
    total, terms = objective(out, specs)
    cmpm = L.cmpm(out["img_feat"], out["txt_feat"], out["labels"])
    cmpc = L.cmpc(out["img_feat"], out["txt_feat"], out["labels"], out["cls_weight"])
    mh = L.max_of_hinges(out["scores"], margin=0.1, positives=out["positives"])
    assert set(terms) == {"cmpm", "cmpc", "mh"}
    np.testing.assert_allclose(terms["mh"], mh, rtol=1e-6)
    np.testing.assert_allclose(total, cmpm + 0.5 * cmpc + 2.0 * mh, rtol=1e-6)
    # The positives from ids reach the loss: two captions of image 0 are not negatives.
    assert not np.isclose(mh, L.max_of_hinges(out["scores"], margin=0.1))


def test_outputs_are_normalised_cosine_scores():
    out = _outputs()
    np.testing.assert_allclose(jnp.linalg.norm(out["img_emb"], axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(out["scores"], out["img_emb"] @ out["txt_emb"].T, rtol=1e-6)
    np.testing.assert_array_equal(out["positives"], np.equal.outer(*[[0, 0, 1, 2, 2, 2]] * 2))


def test_required_outputs():
    assert required_outputs([{"name": "imc"}, {"name": "cmpm"}]) == {
        "scores", "img_emb", "txt_emb", "img_feat", "txt_feat", "labels"
    }


def test_errors():
    out = _outputs()
    with pytest.raises(ValueError, match="valid names"):
        objective(out, [{"name": "max_of_hinge"}])
    with pytest.raises(ValueError, match="s_i_toff"):
        objective(out, [{"name": "aoq_loss"}])
    with pytest.raises(ValueError, match="distinct"):
        objective(out, [{"name": "cmpm"}, {"name": "cmpm"}])
    with pytest.raises(ValueError, match="at least one"):
        objective(out, [])
    with pytest.raises(ValueError, match=r"no hyper-parameter \['margin'\]; valid: \['eps'\]"):
        objective(out, [{"name": "cmpm", "margin": 0.2}])
