"""Registry (`itm_jax.losses.get`, `itm_jax.losses.names`) and the `with_aux=True` contract
shared by every loss (docs/losses.md, "Conventions")."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_refs as ref
from itm_jax import losses

EXPECTED_NAMES = (
    "aoq_loss",
    "caption_generation",
    "cmpc",
    "cmpm",
    "contrastive_max_negative",
    "contrastive_sum_negatives",
    "dual_path_ranking",
    "imc",
    "instance_loss",
    "max_of_hinges",
    "multimodal_nce",
    "sum_of_hinges",
)


def _sample_args(name):
    """Small random float64 positional arguments (as NumPy) and keyword arguments per loss."""
    rng = np.random.default_rng(len(name))
    b, d = 5, 4
    s = ref.rand_scores(rng, b)
    img = ref.unit_rows(rng, b, d)
    txt = ref.noisy_copy(rng, img)
    labels = np.array([0, 1, 0, 2, 3], dtype=np.int32)
    if name in ("sum_of_hinges", "max_of_hinges", "dual_path_ranking",
                "contrastive_sum_negatives", "contrastive_max_negative"):
        return (s,), {}
    if name == "imc":
        return (s, img, txt), {}
    if name == "cmpm":
        return (2 * img, 3 * txt, labels), {}
    if name == "cmpc":
        return (2 * img, 3 * txt, labels, rng.normal(size=(d, 4))), {}
    if name == "instance_loss":
        return (rng.normal(size=(b, 4)), rng.normal(size=(b, 4)), labels), {}
    if name == "multimodal_nce":
        return (img, txt), {}
    if name == "caption_generation":
        log_probs = np.log(rng.dirichlet(np.ones(6), size=(b, 3)))
        return (log_probs, rng.integers(0, 6, size=(b, 3)), (rng.uniform(size=(b, 3)) < 0.7) * 1.0), {}
    if name == "aoq_loss":
        diag = np.diag(s)
        return (s, *(diag + rng.uniform(-0.3, 0.1, size=b) for _ in range(4))), {}
    raise AssertionError(name)


def test_names_sorted_tuple():
    names = losses.names()
    assert isinstance(names, tuple)
    assert list(names) == sorted(names)
    assert len(set(names)) == len(names)
    assert set(EXPECTED_NAMES) <= set(names)
    assert "positives_from_ids" not in names


@pytest.mark.parametrize("bad", ["vse++", "MaxOfHinges", "", "positives_from_ids", "nce"])
def test_get_unknown_name_lists_valid_names(bad):
    if bad in losses.names():
        pytest.fail(f"{bad!r} is unexpectedly registered")
    with pytest.raises(ValueError) as err:
        losses.get(bad)
    msg = str(err.value)
    for name in EXPECTED_NAMES:
        assert name in msg


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_get_and_with_aux(name):
    """get(name) is the loss (same value); with_aux=True returns (loss, aux) with loss equal
    to the plain call and aux a dict of finite scalar arrays."""
    fn = losses.get(name)
    assert callable(fn)
    args, kw = _sample_args(name)
    plain_fn = getattr(losses, name)
    with jax.enable_x64(True):
        def f(*a):
            out = fn(*a, with_aux=True, **kw)
            assert isinstance(out, tuple) and len(out) == 2
            loss, aux = out
            assert isinstance(aux, dict)
            for key, value in aux.items():
                assert isinstance(key, str)
                assert jnp.shape(value) == (), (key, jnp.shape(value))
            return plain_fn(*a, **kw), fn(*a, **kw), loss, aux

        plain, via_get, loss, aux = jax.jit(f)(*(jnp.asarray(a) for a in args))
    assert np.isfinite(float(plain))
    assert float(via_get) == pytest.approx(float(plain), rel=1e-12, abs=1e-15)
    assert float(loss) == pytest.approx(float(plain), rel=1e-12, abs=1e-15)
    for key, value in aux.items():
        assert np.isfinite(float(value)), key


def test_with_aux_eager_and_grad():
    """Outside jit too, and as a has_aux function for jax.grad (max_of_hinges)."""
    s = ref.rand_scores(np.random.default_rng(0), 5)
    with jax.enable_x64(True):
        x = jnp.asarray(s)
        loss, aux = losses.max_of_hinges(x, with_aux=True)
        assert isinstance(aux, dict)
        assert float(loss) == pytest.approx(ref.max_of_hinges(s), rel=1e-10)
        g, aux_g = jax.jit(jax.grad(lambda y: losses.max_of_hinges(y, with_aux=True),
                                    has_aux=True))(x)
        g_plain = jax.jit(jax.grad(losses.max_of_hinges))(x)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_plain), rtol=1e-12, atol=1e-14)
    assert set(aux_g) == set(aux)
