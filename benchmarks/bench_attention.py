"""pytest-benchmark suite for attention, on the cases of `fastgen bench` (bench/attention.py).

    pytest benchmarks/bench_attention.py --benchmark-group-by=group            # quick tier
    FASTGEN_BENCH_TIER=full pytest benchmarks/bench_attention.py ...           # every case

Each case is one group: fastgen, the reference and that case's peers (torch SDPA, dense masked
SDPA or torch.compile) side by side. On CUDA the timed callable synchronises; the CUDA-event
median is stored in extra_info["cuda_event_ms"], and TFLOP/s (FlashAttention 3's count) from it.
"""

import os
import statistics

import pytest
import torch

from fastgen.bench import all_cases, select, time_call

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = select([c for c in all_cases(DEVICE) if c.op == "attention"],
               os.environ.get("FASTGEN_BENCH_TIER", "quick"))
PAIRS = [(c, name) for c in CASES for name in ("fastgen", "reference", *c.peers)]
_STATE = {}


@pytest.mark.parametrize("case,contender", PAIRS, ids=[f"{c.id}-{n}" for c, n in PAIRS])
def test_attention(benchmark, case, contender):
    if case.id not in _STATE:
        _STATE.clear()  # one case's tensors alive at a time
        _STATE[case.id] = case.setup()
    state = _STATE[case.id]
    fn = {"fastgen": case.fastgen, "reference": case.reference, **case.peers}[contender]
    fn(state)  # warm-up; compiles the torch.compile peer
    benchmark.group = case.id
    benchmark.extra_info.update(backend=case.backend, flops=case.flops)
    if case.device == "cuda":
        benchmark(lambda: (fn(state), torch.cuda.synchronize()))
        ms = 1e3 * statistics.median(time_call(lambda: fn(state), "cuda") for _ in range(10))
        benchmark.extra_info.update(cuda_event_ms=ms, tflops=case.flops / (ms * 1e-3) / 1e12)
    else:
        benchmark(fn, state)
