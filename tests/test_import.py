"""`import fastgen` compiles nothing, prints nothing, initialises no CUDA and imports no triton."""

import os
import subprocess
import sys
import textwrap


def _run(code: str, env_extra=None):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=300)


def test_import_is_silent_and_lazy(tmp_path):
    ext_dir = tmp_path / "torch_extensions"
    r = _run("""
        import sys, torch
        import fastgen
        assert not torch.cuda.is_initialized(), "CUDA initialised at import"
        assert "triton" not in sys.modules, "triton imported at import"
        assert "fastgen.kernels.bias_act" not in sys.modules
        assert "fastgen.bench" not in sys.modules
    """, {"TORCH_EXTENSIONS_DIR": str(ext_dir)})
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    assert not ext_dir.exists() or not any(ext_dir.iterdir()), "something was JIT-compiled"


def test_works_without_the_extension():
    """FASTGEN_NO_EXT=1 skips the compiled extension: ops fall back, loudly, to the reference."""
    r = _run("""
        import warnings, torch, fastgen
        assert not fastgen._ext.available()
        assert "FASTGEN_NO_EXT" in fastgen._ext.unavailable_reason()
        x = torch.randn(4, 3)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            y = fastgen.ops.bias_act(x, torch.zeros(3), act="relu")
        assert any("falls back to the PyTorch reference" in str(m.message) for m in w), w
        torch.testing.assert_close(y, torch.relu(x) * 2 ** 0.5)
        print("ok")
    """, {"FASTGEN_NO_EXT": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_loader_refuses_a_build_for_another_torch_or_cpu(monkeypatch):
    """The build record is checked before the binary is loaded, with a reason that says why."""
    import torch

    from fastgen import _ext

    assert _ext._torch_differs(torch.__version__) is None
    why = _ext._torch_differs("1.0.0")
    assert "built against torch 1.0.0" in why and torch.__version__ in why
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: False, raising=False)
    assert "built for avx512 but this CPU lacks it" in _ext._cpu_lacks("avx512")
    assert _ext._cpu_lacks("none") is None
