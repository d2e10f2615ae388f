"""`fastgen info` (and `python -m fastgen`): versions, build flags, devices, backend per op."""

import json
import subprocess
import sys

from fastgen.cli import main


def test_info_lists_versions_build_and_backends(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for needle in ("torch", "triton", "numba", "build:", "loaded:", "devices: cpu",
                   "bias_act     cpu   ->"):
        assert needle in out, needle


def test_info_json_is_machine_readable(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {"torch", "triton", "numba", "build", "extension", "backends"} <= set(info)
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
    assert "final PSNR" in text and "reference hash grid" in text and "step      3" in text
    for name in ("p_original.png", "p_fit.png", "p_side_by_side.png"):
        assert (out / name).stat().st_size > 100
    assert Image.open(out / "p_side_by_side.png").size == (40, 24)


def test_demo_image_errors(tmp_path):
    import pytest

    from fastgen.cli import main

    with pytest.raises(SystemExit, match="is not a file"):
        main(["demo", "image", "--image", str(tmp_path / "missing.png"), "--steps", "1"])
