"""The benchmark harness: timing, table, JSON, plot, selection, and the CLI front end."""

import json

import pytest
import torch

from fastgen import bench
from fastgen.bench import Case, measure
from fastgen.cli import main


def _toy_case(tier="quick"):
    def setup():
        return {"x": torch.randn(1000, dtype=torch.float32)}

    return Case(op="toy", name="double", device="cpu", dtype=torch.float32, setup=setup,
                fastgen=lambda s: s["x"] * 2, reference=lambda s: s["x"] + s["x"],
                peers={"slow": lambda s: torch.stack([s["x"], s["x"]]).sum(0)},
                truth=lambda s: s["x"].double() * 2, bytes_moved=8000, tier=tier)


def test_measure_times_every_contender_interleaved():
    r = measure(_toy_case(), repeats=3, warmup=1)
    assert set(r.ms) == {"fastgen", "reference", "slow"} and all(v > 0 for v in r.ms.values())
    assert r.max_error == 0.0 and r.ref_error == 0.0 and r.repeats == 3
    assert r.peer == "slow" and r.speedup("reference") == r.ms["reference"] / r.ms["fastgen"]
    assert r.gbps == pytest.approx(8000 / (r.ms["fastgen"] * 1e-3) / 1e9)


def test_table_json_and_plot(tmp_path):
    results = [measure(_toy_case(), repeats=2, warmup=0)]
    table = bench.format_table(results)
    for col in ("fastgen ms", "reference ms", "peer ms", "x reference", "x peer", "max error",
                "ref error", "GB/s", "floor ms"):
        assert col in table
    assert "| toy " in table and "slow" in table
    path = tmp_path / "r.json"
    bench.write_json(str(path), results, bench.metadata())
    data = json.loads(path.read_text())
    assert data["meta"]["torch"] == torch.__version__
    assert data["results"][0]["speedup_vs_reference"] > 0
    pytest.importorskip("matplotlib")
    bench.plot(str(tmp_path / "r.png"), results)
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_selection_by_tier_and_filter():
    cases = [_toy_case("quick"), _toy_case("full")]
    assert len(bench.select(cases, "quick")) == 1 and len(bench.select(cases, "full")) == 2
    assert bench.select(cases, "full", "nothing-matches") == []
    real = bench.all_cases("cpu")
    assert any(c.tier == "quick" for c in real) and any(c.tier == "full" for c in real)
    assert len({c.id for c in real}) == len(real), "case ids must be unique"


def test_cli_runs_a_filtered_case(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert main(["bench", "--filter", "swish", "--repeats", "1", "--warmup", "1",
                 "--no-progress", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "swish b fc fwd+bwd" in out and "torch.compile" in out
    result = json.loads(path.read_text())["results"][0]
    assert result["max_error"] < 1e-3 and result["backend"] in ("cpu", "reference")


def test_cli_list_and_errors(capsys):
    assert main(["bench", "--list", "--full"]) == 0
    assert "64x256x64x64" in capsys.readouterr().out
    assert main(["bench", "--filter", "no-such-case", "--no-progress"]) == 2
    with pytest.raises(SystemExit):
        main(["bench", "--repeats", "0"])


@pytest.mark.parametrize("kind,kw", [("sdpa", dict(causal=True)), ("window", dict(window=(9, 0))),
                                     ("softcap", dict(softcap=5.0)),
                                     ("varlen", dict(causal=True))])
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_attention_cases_run_and_count_flops(kind, kw, mode):
    from fastgen.bench.attention import _case

    case = _case("cpu", "cpu", "tiny", 3, 40, 2, 16, kind, kw, torch.float32, mode, "quick")
    r = measure(case, repeats=1, warmup=1)
    assert r.max_error < 1e-4 and (r.ref_error is None or r.ref_error < 1e-4)
    assert set(r.ms) == {"fastgen", "reference", *case.peers} and len(case.peers) == 1
    dense = 2 * 3 * 2 * 40 * 40 * 32 * (3.5 if mode == "fwd+bwd" else 1)
    assert 0 < case.flops <= dense and r.tflops() > 0
    assert "TFLOP/s" in bench.format_table([r])


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
def test_hashgrid_cases_run_and_report_a_rate(mode):
    from fastgen.bench.hashgrid import NERF, _case

    small = dict(NERF, log2_hashmap_size=12)
    case = _case("cpu", "cpu", "tiny", 3, small, 500, mode, "quick")
    r = measure(case, repeats=1, warmup=1)
    assert r.max_error < 1e-5 and set(r.ms) == {"fastgen", "reference"}
    assert r.rate() == pytest.approx(500 / (r.ms["fastgen"] * 1e-3)) and r.bytes_moved > 0
    assert "pts/s" in bench.format_table([r])


def test_decode_and_sample_cases_run_small():
    from fastgen.bench.decode import _decode_case, _sample_case

    r = measure(_decode_case("cpu", torch.float32, 2, 4, 2, 16, 70, "quick"), repeats=1,
                warmup=0)
    assert r.max_error < 1e-5 and set(r.ms) == {"fastgen", "reference", "torch SDPA"}
    r = measure(_sample_case("cpu", 3, 500, "quick"), repeats=1, warmup=0)
    assert r.max_error == 0.0  # same uniforms: the reference draws the same tokens


def test_rate_units():
    from fastgen.bench.runner import _rate

    assert _rate(83000, "tok") == "83 ktok/s" and _rate(2.5e6, "pts") == "2.5 Mpts/s"
    assert _rate(12.0, "tok") == "12 tok/s"
