"""The README's run API snippet runs as printed, after the command it gives to train a run."""

import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _blocks(section: str) -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"```(bash|python)\n(.*?)```", body, re.S))


def test_the_run_api_snippet_runs_as_printed(tmp_path):
    blocks = _blocks("Using a trained run")
    for name in (".venv", "configs"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {**os.environ, "XLA_FLAGS": "", "ITM_JAX_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    train = subprocess.run(["bash", "-c", blocks["bash"]],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    snippet = subprocess.run([sys.executable, "-c", blocks["python"]], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600)
    assert snippet.returncode == 0, snippet.stderr[-3000:]
    export = tmp_path / "workdir" / "smoke_export"
    assert sorted(p.name for p in export.iterdir()) == [
        "cap_to_img.npy", "caption_ids.npy", "captions.npy", "export.json", "image_ids.npy",
        "images.npy"]
