"""itm_jax: image-text matching losses, metrics, encoders and training in JAX."""

__version__ = "0.1.0"
