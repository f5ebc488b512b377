"""Command-line shells: each parses its flags and calls the library (``itm-train``, ``itm-eval``,
``itm-mine``, ``python -m itm_jax.cli.demo``)."""
