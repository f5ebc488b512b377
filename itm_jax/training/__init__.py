"""Training: the optimiser and its stages (``optim``), the pure train step (``step``), the loop
with its run-directory lifecycle (``loop``, ``run_dir``), checkpoints and metric logs."""
