"""Captioned-image datasets: sources, tokenisation, pre-processing and Grain pipelines."""
