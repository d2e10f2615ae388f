"""`fastgen info` (and `python -m fastgen`): versions, build flags, devices, backend per op."""

import json
import os
import subprocess
import sys

from fastgen.cli import main


def test_info_lists_versions_build_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in ("torch", "triton", "numba", "build:", "loaded:", "devices: cpu",
                   "bias_act     cpu   ->", "cpu buffer cache:"):
        assert needle in out, needle


def test_info_json_is_machine_readable(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"torch", "triton", "numba", "build", "extension", "backends",
            "cpu_buffer_cache"} <= set(info)
    assert any(row["op"] == "bias_act" and row["device"] == "cpu" for row in info["backends"])


def test_module_entry_point():
    r = subprocess.run([sys.executable, "-m", "fastgen", "info"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "backend per op" in r.stdout, r.stderr


def test_demo_image_on_a_given_photo(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from fastgen.cli import main

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    out = tmp_path / "out"
    assert main(["demo", "image", "--image", str(tmp_path / "p.png"), "--steps", "3",
                 "--batch-size", "256", "--reference-steps", "1", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "final PSNR" in text and "reference kernels" in text and "step      3" in text
    for name in ("p_original.png", "p_fit.png", "p_side_by_side.png"):
        assert (out / name).stat().st_size > 100
    assert Image.open(out / "p_side_by_side.png").size == (40, 24)


def test_demo_image_errors(tmp_path):
    import pytest

    from fastgen.cli import main

    with pytest.raises(SystemExit, match="is not a file"):
        main(["demo", "image", "--image", str(tmp_path / "missing.png"), "--steps", "1"])


def test_demo_diffusion_tiny(tmp_path, capsys):
    import pytest
    from PIL import Image

    pytest.importorskip("fastgen.diffusion")
    out = tmp_path / "out"
    assert main(["demo", "diffusion", "--steps", "3", "--sampling-steps", "2", "--n", "4",
                 "--n-train", "64", "--timing-repeats", "1", "--scheduler", "euler_a",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "step      3" in text and "trained 3 steps" in text, text
    assert "fastgen.diffusion" in text and "EulerAncestralDiscreteScheduler" in text, text
    timing = [line for line in text.splitlines() if line.startswith("per sampling step")]
    assert len(timing) == 1 and "scheduler.step fastgen" in timing[0] and "vs reference" in \
        timing[0] and "model forward" in timing[0], text
    # the fused step and its reference draw the same noise: the samples agree to float32
    # rounding of values up to ~500 (sigma_max 157; 3e-5 measured), not O(1) as other noise gives
    assert float(timing[0].rsplit("at most ", 1)[1].rstrip(".")) < 1e-3, timing[0]
    for name, size in (("samples_euler_a.png", 140), ("training_shapes.png", 140)):
        with Image.open(out / name) as im:      # 2 x 2 grid of 16 px + 1 px padding, x4
            assert im.size == (size, size) and im.mode == "L"


def test_demo_diffusion_errors(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setitem(sys.modules, "fastgen.diffusion", None)   # as if it were missing
    with pytest.raises(SystemExit, match="fastgen.diffusion"):
        main(["demo", "diffusion", "--steps", "1", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="--sampling-steps must be >= 1"):
        main(["demo", "diffusion", "--steps", "1", "--sampling-steps", "0"])
    assert not any(tmp_path.iterdir())          # failed before training, wrote nothing


def test_demo_diffusion_reference_backend_switch(monkeypatch):
    """The demo's reference timing must really run sampler_step's reference, then restore."""
    from fastgen.demos.diffusion import reference_backend
    from fastgen.registry import ENV_VAR, get

    op, noise = get("sampler_step"), get("randn")
    for before in (None, "reference,bias_act=cpu"):
        if before is None:
            monkeypatch.delenv(ENV_VAR, raising=False)
        else:
            monkeypatch.setenv(ENV_VAR, before)
        with reference_backend():
            assert op.select("cpu").name == "reference"
            assert noise.select("cpu").name == "reference"
        assert os.environ.get(ENV_VAR) == before
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert op.select("cpu").name == ("cpu" if op.reasons("cpu")["cpu"] is None else "reference")


def test_demo_gpt_tiny(capsys):
    assert main(["demo", "gpt", "--steps", "2", "--new-tokens", "6", "--layers", "1", "--dim",
                 "48", "--seq-len", "16", "--batch-size", "2", "--corpus-bytes", "20000"]) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out and "tok/s with the KV cache" in out
