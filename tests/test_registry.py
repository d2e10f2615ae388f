"""The backend registry: precedence, environment variable, errors that list every backend."""

import os
import warnings

import pytest
import torch

from fastgen import registry
from fastgen.registry import Backend, BackendError, Op


def _op(**overrides):
    calls = []
    backends = [
        Backend("triton", lambda *a: calls.append("triton"), devices=("cuda",)),
        Backend("cpu", lambda *a: calls.append("cpu"), devices=("cpu",),
                available=overrides.get("cpu_available", lambda dev: None),
                check=lambda x: "no float64" if x.dtype == torch.float64 else None),
        Backend("reference", lambda *a: calls.append("reference")),
    ]
    return Op("toy", backends), calls


def test_best_available_in_preference_order(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    op, _ = _op()
    assert op.select("cpu", (torch.ones(2),)).name == "cpu"
    # cpu's per-call check rejects float64: the reference takes it, with a one-time warning.
    with pytest.warns(RuntimeWarning, match="falls back to the PyTorch reference.*no float64"):
        assert op.select("cpu", (torch.ones(2, dtype=torch.float64),)).name == "reference"


def test_argument_beats_env_var_beats_default(monkeypatch):
    op, _ = _op()
    x = (torch.ones(2),)
    monkeypatch.setenv(registry.ENV_VAR, "reference")
    assert op.select("cpu", x).name == "reference"
    assert op.select("cpu", x, backend="cpu").name == "cpu"
    monkeypatch.setenv(registry.ENV_VAR, "reference,toy=cpu")
    assert op.select("cpu", x).name == "cpu"
    monkeypatch.setenv(registry.ENV_VAR, "cuda")  # a backend this op lacks: ignored for it
    assert op.select("cpu", x).name == "cpu"
    monkeypatch.setenv(registry.ENV_VAR, "tritn")
    with pytest.raises(BackendError, match="'tritn' is not a backend name"):
        op.select("cpu", x)


def test_requested_backend_that_cannot_run_lists_every_reason(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    op, _ = _op(cpu_available=lambda dev: "extension not built")
    with pytest.raises(BackendError) as info:
        op.select("cpu", (torch.ones(2),), backend="cpu")
    msg = str(info.value)
    assert "backend='cpu' cannot run this call: extension not built" in msg
    assert "triton     runs on cuda tensors, not cpu" in msg
    assert "reference  can run" in msg
    with pytest.raises(BackendError, match="unknown backend 'cuda'; this op has triton, cpu, "
                                           "reference"):
        op.select("cpu", (torch.ones(2),), backend="cuda")


def test_no_backend_at_all():
    op = Op("lonely", [Backend("cpu", lambda: None, devices=("cpu",))])
    with pytest.raises(BackendError, match="no backend can run this call"):
        op.select("cuda")


def test_availability_is_lazy_and_cached():
    seen = []
    op = Op("lazy", [Backend("cpu", lambda: None, available=lambda d: seen.append(d))])
    assert seen == []
    op.select("cpu")
    op.select("cpu")
    assert seen == ["cpu"]


def test_bad_declarations_are_rejected():
    with pytest.raises(ValueError, match="distinct names"):
        Op("dup", [Backend("cpu", print), Backend("cpu", print)])
    with pytest.raises(ValueError, match="distinct names"):
        Op("odd", [Backend("gpu", print)])


def test_describe_covers_every_registered_op():
    rows = registry.describe(("cpu",))
    assert {r["op"] for r in rows} == set(registry.ops())
    for r in rows:
        assert set(r["reasons"]) == {b.name for b in registry.get(r["op"]).backends}
        assert r["backend"] is None or r["reasons"][r["backend"]] is None


def test_fallback_warns_once_per_op_and_device(monkeypatch):
    monkeypatch.delenv(registry.ENV_VAR, raising=False)
    op = Op("once", [Backend("cpu", print, available=lambda d: "missing"),
                     Backend("reference", print)])
    with pytest.warns(RuntimeWarning):
        op.select("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op.select("cpu")


def test_use_backend_routes_the_named_ops_and_restores_the_variable(monkeypatch):
    import fastgen  # noqa: F401  (registers the ops)
    from fastgen.registry import ENV_VAR, get, use_backend

    monkeypatch.setenv(ENV_VAR, "bias_act=reference")
    with use_backend("reference", "sample", "march"):
        assert get("sample").select("cpu").name == "reference"
        assert get("march").select("cpu").name == "reference"
        assert get("bias_act").select("cpu").name == "reference"  # the old rule still holds
    assert os.environ[ENV_VAR] == "bias_act=reference"
    assert get("sample").select("cpu").name != "reference"
