"""Hand-written operations that the models call in place of plain JAX code where it pays."""
