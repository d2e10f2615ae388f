"""pytest-benchmark suite for bias_act, on the cases of `fastgen bench` (fastgen/bench/bias_act.py).

    pytest benchmarks/bench_bias_act.py --benchmark-group-by=group            # quick tier
    FASTGEN_BENCH_TIER=full pytest benchmarks/bench_bias_act.py ...           # every case

Each case is one group with fastgen, the reference and the peers side by side. On CUDA the timed
callable synchronises, so pytest-benchmark's wall time is the kernels' time plus launch overhead;
the CUDA-event median (kernels only) is stored beside it in extra_info["cuda_event_ms"].
"""

import os
import statistics

import pytest
import torch

from fastgen.bench import all_cases, select, time_call

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = select([c for c in all_cases(DEVICE) if c.op == "bias_act"],
               os.environ.get("FASTGEN_BENCH_TIER", "quick"))
_STATE = {}


def _contenders(case):
    return {"fastgen": case.fastgen, "reference": case.reference, **case.peers}


@pytest.mark.parametrize("contender", ["fastgen", "reference", "torch.compile"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bias_act(benchmark, case, contender):
    if case.id not in _STATE:
        _STATE.clear()  # one case's tensors alive at a time
        _STATE[case.id] = case.setup()
    state = _STATE[case.id]
    fn = _contenders(case)[contender]
    fn(state)  # warm-up; compiles the torch.compile peer
    benchmark.group = case.id
    benchmark.extra_info.update(backend=case.backend, bytes_moved=case.bytes_moved)
    if case.device == "cuda":
        benchmark(lambda: (fn(state), torch.cuda.synchronize()))
        benchmark.extra_info["cuda_event_ms"] = 1e3 * statistics.median(
            time_call(lambda: fn(state), "cuda") for _ in range(10))
    else:
        benchmark(fn, state)
