"""``python -m itm_jax.main``: the same command as ``itm-train`` (``itm_jax.cli.train``)."""

from itm_jax.cli.train import run

if __name__ == "__main__":
    run()
