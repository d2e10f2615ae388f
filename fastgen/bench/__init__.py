"""Benchmarks: cases defined once (:mod:`fastgen.bench.bias_act`, ...), timed by ``fastgen bench``
and by the pytest-benchmark suites in benchmarks/. See :mod:`fastgen.bench.core` for the method."""

from .core import Case, Result, copy_bandwidth, measure, time_call
from .runner import all_cases, format_table, metadata, plot, run, select, write_json

__all__ = ["Case", "Result", "copy_bandwidth", "measure", "time_call", "all_cases", "select", "run",
           "format_table", "write_json", "plot", "metadata"]
