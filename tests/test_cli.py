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
