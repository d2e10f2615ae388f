"""fastgen.ops.fused_mlp and fastgen.nn.FusedMLP on every backend that runs here: values and
gradients against a float64 truth (odd widths, one to four hidden layers, rows past a tile and a
chunk, every activation), poisoned outputs, gradcheck and gradgradcheck, thread-count independence
of the weight gradient, torch.compile, tcnn config dicts, and bad input."""

import pytest
import torch

from fastgen.nn import FusedMLP
from fastgen.ops import fused_mlp, fused_mlp_mse
from fastgen.reference import mlp as ref
from fastgen.testing import available_backends, devices
from fastgen.testing.compare import poisoned

CASES = [(d, b) for d in devices() for b in available_backends("fused_mlp", d)]
NATIVE = [b for b in available_backends("fused_mlp", "cpu") if b != "reference"]


def _net(K, H, n_out, n_hidden, dtype=torch.float64, gen=None):
    widths = [K] + [H] * n_hidden + [n_out]
    return [(torch.rand(o, i, generator=gen, dtype=dtype) * 2 - 1) * (3.0 / i) ** 0.5
            for i, o in zip(widths[:-1], widths[1:])]


def _values_and_grads(x, ws, backend, device, act, out_act, gy):
    x = x.to(device).requires_grad_()
    ws = [w.to(device).requires_grad_() for w in ws]
    with poisoned():
        y = fused_mlp(x, ws, activation=act, output_activation=out_act, backend=backend)
        grads = torch.autograd.grad(y, [x, *ws], gy.to(device))
    return [t.cpu() for t in (y, *grads)]


@pytest.mark.parametrize("device,backend", CASES)
@pytest.mark.parametrize("M,K,H,n_out,n_hidden", [(1, 2, 16, 3, 2), (96, 32, 64, 3, 2),
                                              (1000, 5, 24, 17, 3), (7, 3, 8, 1, 1),
                                              (2000, 16, 32, 4, 4), (97, 64, 128, 16, 1)])
@pytest.mark.parametrize("act,out_act", [("ReLU", "None"), ("ReLU", "Sigmoid"), ("None", "ReLU"),
                                         ("None", "Sigmoid")])
def test_matches_float64_truth(device, backend, M, K, H, n_out, n_hidden, act, out_act, gen):
    x = torch.randn(M, K, generator=gen, dtype=torch.float64)
    ws = _net(K, H, n_out, n_hidden, gen=gen)
    gy = torch.randn(M, n_out, generator=gen, dtype=torch.float64)
    truth = _values_and_grads(x, ws, "reference", "cpu", act, out_act, gy)
    got64 = _values_and_grads(x, ws, backend, device, act, out_act, gy)
    for g64, t in zip(got64, truth):
        torch.testing.assert_close(g64, t, rtol=1e-12, atol=1e-12)
    # float32 against the float64 truth of the same (rounded) inputs. Values are continuous; the
    # gradients of a ReLU net jump where a pre-activation within float32 rounding of 0 flips
    # sign (an O(1) change of that unit's gradient), so they are compared for smooth nets only.
    x32, ws32, gy32 = x.float(), [w.float() for w in ws], gy.float()
    got32 = _values_and_grads(x32, ws32, backend, device, act, out_act, gy32)
    truth32 = _values_and_grads(x32.double(), [w.double() for w in ws32], "reference", "cpu", act,
                                out_act, gy32.double())
    smooth = "ReLU" not in (act, out_act)
    for i, (g32, t) in enumerate(zip(got32, truth32)):
        assert g32.dtype == torch.float32 and g32.shape == t.shape
        if i == 0 or smooth:
            scale = t.abs().max().item() + 1e-30
            assert (g32.double() - t).abs().max().item() <= 2e-5 * scale + 1e-6, i


@pytest.mark.parametrize("device,backend", CASES)
def test_leading_dims_views_and_no_rows(device, backend, gen):
    ws = [w.float().to(device) for w in _net(6, 16, 2, 2, gen=gen)]
    x = torch.randn(2, 3, 12, generator=gen).to(device)[..., ::2]       # non-contiguous [2, 3, 6]
    y = fused_mlp(x, ws, backend=backend)
    assert y.shape == (2, 3, 2)
    torch.testing.assert_close(y, ref.fused_mlp(x, ws), rtol=2e-6, atol=1e-6)
    empty = fused_mlp(x[:0], ws, backend=backend)
    assert empty.shape == (0, 3, 2)
    xe = torch.zeros(0, 6, device=device, requires_grad=True)
    wr = [w.clone().requires_grad_() for w in ws]
    fused_mlp(xe, wr, backend=backend).sum().backward()
    assert all(w.grad is not None and not w.grad.any() for w in wr)


@pytest.mark.parametrize("backend", NATIVE)
def test_gradcheck_and_second_order(backend, gen):
    x = torch.randn(13, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = [w.requires_grad_() for w in _net(4, 8, 2, 2, gen=gen)]
    for out_act in ("None", "ReLU", "Sigmoid"):
        def f(x, *w, out_act=out_act):
            return fused_mlp(x, list(w), output_activation=out_act, backend=backend)

        assert torch.autograd.gradcheck(f, (x, *ws))
        assert torch.autograd.gradgradcheck(f, (x, *ws))


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("frozen", [None, 0, 1])
def test_partial_graphs(backend, frozen, gen):
    """x without grad, a frozen weight, a non-contiguous incoming gradient, a ParameterList."""
    x = torch.randn(50, 3, generator=gen)
    ws = [torch.nn.Parameter(w.float(), requires_grad=i != frozen)
          for i, w in enumerate(_net(3, 16, 2, 2, gen=gen))]
    gy = torch.randn(2, 50, generator=gen).t()
    got = torch.autograd.grad(fused_mlp(x, torch.nn.ParameterList(ws), backend=backend),
                              [w for w in ws if w.requires_grad], gy)
    want = torch.autograd.grad(ref.fused_mlp(x, ws), [w for w in ws if w.requires_grad], gy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", NATIVE)
@pytest.mark.parametrize("act,out_act", [("ReLU", "ReLU"), ("ReLU", "None"), ("None", "ReLU")])
def test_nan_propagates_like_torch(backend, act, out_act, gen):
    x = torch.randn(7, 4, generator=gen, dtype=torch.float64)
    x[2, 1] = float("nan")
    ws = _net(4, 8, 2, 2, gen=gen)
    got = _values_and_grads(x, ws, backend, "cpu", act, out_act, torch.ones(7, 2, dtype=x.dtype))
    want = _values_and_grads(x, ws, "reference", "cpu", act, out_act,
                             torch.ones(7, 2, dtype=x.dtype))
    assert got[0][2].isnan().all()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("backend", NATIVE)
def test_hidden_outputs_are_internal(backend, gen):
    x = torch.randn(30, 5, generator=gen, requires_grad=True)
    ws = [w.float() for w in _net(5, 16, 3, 2, gen=gen)]
    y, hidden = torch.ops.fastgen.mlp_fwd(x, ws, 1, 0, True)
    assert y.requires_grad and not any(h.requires_grad for h in hidden)
    assert [tuple(h.shape) for h in hidden] == [(30, 16), (30, 16)]
    torch.testing.assert_close(hidden[0], torch.relu(x @ ws[0].t()), rtol=2e-6, atol=1e-6)
    _, none = torch.ops.fastgen.mlp_fwd(x.detach(), ws, 1, 0, False)   # inference: not kept
    assert [tuple(h.shape) for h in none] == [(0, 16), (0, 16)]
    with torch.no_grad():
        torch.testing.assert_close(fused_mlp(x, ws, backend=backend), y.detach())
    with torch.inference_mode():
        torch.testing.assert_close(fused_mlp(x, ws, backend=backend), y.detach())
    with pytest.raises(RuntimeError, match="save_hidden"):
        torch.ops.fastgen.mlp_fwd(x, ws, 1, 0, False)[0].sum().backward()


@pytest.mark.parametrize("backend", NATIVE)
def test_zero_input_width(backend):
    ws = [torch.zeros(4, 0), torch.ones(2, 4)]
    y = fused_mlp(torch.zeros(3, 0), ws, output_activation="Sigmoid", backend=backend)
    torch.testing.assert_close(y, torch.full((3, 2), 0.5))


@pytest.mark.parametrize("backend", NATIVE)
def test_weight_gradient_independent_of_threads(backend, gen):
    x = torch.randn(5000, 8, generator=gen)
    ws = [w.float() for w in _net(8, 32, 3, 2, gen=gen)]
    gy = torch.randn(5000, 3, generator=gen)
    _assert_same_for_any_thread_count(
        lambda: _values_and_grads(x, ws, backend, "cpu", "ReLU", "None", gy))


def _assert_same_for_any_thread_count(run):
    """run() (a list of tensors) gives bitwise the same results on 1, 2 and 3 threads."""
    results = []
    old = torch.get_num_threads()
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run())
    finally:
        torch.set_num_threads(old)
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", NATIVE)
def test_compiles_fullgraph(backend, gen):
    x = torch.randn(40, 5, generator=gen, requires_grad=True)
    ws = [w.float().requires_grad_() for w in _net(5, 16, 3, 2, gen=gen)]
    f = torch.compile(lambda x, ws: fused_mlp(x, ws, output_activation="Sigmoid",
                                              backend=backend), fullgraph=True)
    y = f(x, ws)
    want = ref.fused_mlp(x, ws, "ReLU", "Sigmoid")
    torch.testing.assert_close(y, want, rtol=2e-6, atol=1e-6)
    got = torch.autograd.grad(y.square().sum(), [x, *ws])
    for a, b in zip(got, torch.autograd.grad(want.square().sum(), [x, *ws])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_module_and_tcnn_config(gen):
    torch.manual_seed(int(torch.randint(0, 2**31, (), generator=gen)))
    net = FusedMLP.from_tcnn_config(32, 3, {"otype": "FullyFusedMLP", "activation": "relu",
                                            "output_activation": "None", "n_neurons": 64,
                                            "n_hidden_layers": 2})
    assert (net.n_input_dims, net.n_output_dims, net.n_neurons, net.n_hidden_layers) == (32, 3, 64,
                                                                                          2)
    assert net.activation == "ReLU" and net.n_params == 32 * 64 + 64 * 64 + 64 * 3
    assert [tuple(w.shape) for w in net.weights] == [(64, 32), (64, 64), (3, 64)]
    bound = (6.0 / (64 + 64)) ** 0.5
    assert 0.5 * bound < net.weights[1].abs().max().item() <= bound   # Xavier uniform
    x = torch.rand(10, 32, generator=gen)
    torch.testing.assert_close(net(x), ref.fused_mlp(x, list(net.weights)), rtol=2e-6, atol=1e-6)
    net.backend = "reference"
    torch.testing.assert_close(net(x), ref.fused_mlp(x, list(net.weights)))
    assert FusedMLP.from_tcnn_config(3, 1, {"otype": "CutlassMLP"}).n_hidden_layers == 2
    with pytest.raises(ValueError, match="feedback_alignment"):
        FusedMLP.from_tcnn_config(3, 1, {"otype": "CutlassMLP", "feedback_alignment": True})
    with pytest.raises(ValueError, match="otype"):
        FusedMLP.from_tcnn_config(3, 1, {"otype": "MegakernelMLP"})
    with pytest.raises(ValueError, match="activation"):
        FusedMLP.from_tcnn_config(3, 1, {"activation": "Tanh"})
    with pytest.raises(ValueError, match="n_hidden_layers must be >= 1, got 0"):
        FusedMLP(3, 1, n_hidden_layers=0)
    with pytest.raises(TypeError, match="n_neurons must be an int, got float"):
        FusedMLP(3, 1, n_neurons=64.0)
    with pytest.raises(TypeError, match="dict"):
        FusedMLP.from_tcnn_config(3, 1, [("otype", "FullyFusedMLP")])
    with pytest.raises(TypeError, match="in the config dict"):
        FusedMLP.from_tcnn_config(3, 1, {"activation": "ReLU"}, activation="None")


def test_bad_input(gen):
    x = torch.randn(4, 3, generator=gen)
    ws = [torch.randn(8, 3, generator=gen), torch.randn(2, 8, generator=gen)]
    with pytest.raises(TypeError, match="x must be"):
        fused_mlp(x.long(), ws)
    with pytest.raises(TypeError, match="weights\\[1\\] is torch.float64"):
        fused_mlp(x, [ws[0], ws[1].double()])
    with pytest.raises(ValueError, match="weights\\[0\\] must be \\[N, 3\\]"):
        fused_mlp(x, [torch.randn(8, 4), ws[1]])
    with pytest.raises(ValueError, match="weights\\[1\\] must be \\[N, 8\\]"):
        fused_mlp(x, [ws[0], torch.randn(2, 7)])
    with pytest.raises(ValueError, match="at least 2"):
        fused_mlp(x, ws[:1])
    with pytest.raises(TypeError, match="sequence of matrices"):
        fused_mlp(x, ws[0])
    with pytest.raises(ValueError, match="one width"):
        fused_mlp(x, [ws[0], torch.randn(9, 8), torch.randn(2, 9)])
    with pytest.raises(ValueError, match="activation must be one of"):
        fused_mlp(x, ws, activation="Sigmoid")
    with pytest.raises(ValueError, match="output_activation must be one of"):
        fused_mlp(x, ws, output_activation="Tanh")
    with pytest.raises(ValueError, match="scalar"):
        fused_mlp(torch.tensor(1.0), ws)
    with pytest.raises(TypeError, match="weights\\[0\\] must be a torch.Tensor"):
        fused_mlp(x, [None, ws[1]])
    if NATIVE:
        with pytest.raises(Exception, match="float32 and float64"):
            fused_mlp(x.half(), [w.half() for w in ws], backend="cpu")
        # the C++ op checks what the wrapper normally guarantees
        with pytest.raises(RuntimeError, match="contiguous"):
            torch.ops.fastgen.mlp_fwd(torch.randn(3, 8)[:, ::2], ws, 1, 0, True)
        with pytest.raises(RuntimeError, match="output_activation"):
            torch.ops.fastgen.mlp_fwd(x, ws, 1, 7, True)
        y, hidden = torch.ops.fastgen.mlp_fwd(x, ws, 1, 0, True)
        with pytest.raises(RuntimeError, match="hidden must hold"):
            torch.ops.fastgen.mlp_bwd(y, x, ws, y, [], 1, 0, True)
        with pytest.raises(RuntimeError, match="hidden\\[0\\] must be"):
            torch.ops.fastgen.mlp_bwd(y, x, ws, y, [hidden[0][:2]], 1, 0, True)
        with pytest.raises(RuntimeError, match="grad_y must be .* \\(not contiguous\\)"):
            torch.ops.fastgen.mlp_bwd(torch.randn(2, 4).t(), x, ws, y, hidden, 1, 0, True)


# --- fused_mlp_mse -------------------------------------------------------------------------------

MSE_CASES = [(d, b) for d in devices() for b in available_backends("fused_mlp_mse", d)]
MSE_NATIVE = [b for b in available_backends("fused_mlp_mse", "cpu") if b != "reference"]


def _planar(x: torch.Tensor, F: int) -> torch.Tensor:
    """[M, G * F] -> its planar [G, M, F] form."""
    return x.reshape(x.shape[0], -1, F).transpose(0, 1).contiguous()


def _mse_and_grads(x, ws, t, backend, act, out_act, planar_f=0, scale=1.0):
    """fused_mlp_mse's loss and its gradients to x ([M, K], whatever the layout used), the
    weights and the target."""
    x = x.detach().clone().requires_grad_()
    ws = [w.detach().clone().requires_grad_() for w in ws]
    t = t.detach().clone().requires_grad_()
    with poisoned():
        arg = _planar(x, planar_f) if planar_f else x
        loss = fused_mlp_mse(arg, ws, t, activation=act, output_activation=out_act,
                             backend=backend, planar=bool(planar_f))
        grads = torch.autograd.grad(loss * scale, [x, *ws, t])
    return [loss.detach(), *grads]


@pytest.mark.parametrize("device,backend", MSE_CASES)
@pytest.mark.parametrize("M,G,F,H,n_out,n_hidden", [(1, 1, 2, 16, 3, 2), (96, 16, 2, 64, 3, 2),
                                                    (2000, 3, 1, 24, 17, 3), (97, 2, 4, 8, 1, 1),
                                                    (1300, 5, 3, 32, 4, 2), (203, 9, 1, 16, 2, 1)])
@pytest.mark.parametrize("act,out_act", [("ReLU", "None"), ("ReLU", "Sigmoid"), ("None", "ReLU"),
                                         ("None", "Sigmoid")])
@pytest.mark.parametrize("planar", [False, True])
def test_mse_matches_float64_truth(device, backend, M, G, F, H, n_out, n_hidden, act, out_act,
                                   planar, gen):
    """Loss and gradients (x, every weight, the target) of the fused loss against the reference
    loss in float64; x given planar or as rows; rows past a tile (96) and a chunk (768)."""
    K = G * F
    x = torch.randn(M, K, generator=gen, dtype=torch.float64).to(device)
    ws = [w.to(device) for w in _net(K, H, n_out, n_hidden, gen=gen)]
    t = torch.rand(M, n_out, generator=gen, dtype=torch.float64).to(device)
    pf = F if planar else 0
    truth = _mse_and_grads(x, ws, t, "reference", act, out_act)
    got = _mse_and_grads(x, ws, t, backend, act, out_act, pf)
    for a, b in zip(got, truth, strict=True):
        assert a.dtype == torch.float64 and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    # float32 against the float64 truth of the same rounded inputs (ReLU nets: the loss only,
    # as in test_matches_float64_truth)
    x32, ws32, t32 = x.float(), [w.float() for w in ws], t.float()
    got32 = _mse_and_grads(x32, ws32, t32, backend, act, out_act, pf)
    truth32 = _mse_and_grads(x32.double(), [w.double() for w in ws32], t32.double(), "reference",
                             act, out_act)
    smooth = "ReLU" not in (act, out_act)
    for i, (a, b) in enumerate(zip(got32, truth32)):
        assert a.dtype == torch.float32 and a.shape == b.shape
        if i == 0 or smooth:
            err = (a.double() - b).abs().max().item()
            assert err <= 2e-5 * (b.abs().max().item() + 1e-30) + 1e-7, i


@pytest.mark.parametrize("backend", MSE_NATIVE)
def test_mse_backward_scales_and_repeats(backend, gen):
    """loss.backward() with any incoming gradient (scaled losses, a sum with another term), and
    backward twice through one graph (retain_graph): the saved gradients are never changed."""
    x = torch.randn(300, 6, generator=gen, requires_grad=True)
    ws = [w.float().requires_grad_() for w in _net(6, 16, 3, 2, gen=gen)]
    t = torch.rand(300, 3, generator=gen)
    want = torch.autograd.grad(ref.fused_mlp_mse(x, ws, t) * -2.5, [x, *ws])
    loss = fused_mlp_mse(x, ws, t, backend=backend)
    for _ in range(2):
        got = torch.autograd.grad(loss * -2.5 + x.sum() * 0, [x, *ws], retain_graph=True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    ones = torch.autograd.grad(loss, [x, *ws], retain_graph=True)   # handed over as computed
    kept = [g.clone() for g in ones]
    for a, b in zip(ones, want, strict=True):
        torch.testing.assert_close(a * -2.5, b, rtol=1e-5, atol=1e-7)
    for g in ones:   # the caller owns them: changing them changes nothing the graph holds
        g.mul_(0)
    again = torch.autograd.grad(loss, [x, *ws], retain_graph=True)
    for a, k in zip(again, kept, strict=True):
        assert torch.equal(a, k)
    # .grad of the leaves, accumulated in place by the second loss: the gradients returned
    # before are not aliased by them
    loss.backward()
    fused_mlp_mse(x, ws, t, backend=backend).backward()
    for leaf, g, k in zip([x, *ws], again, kept, strict=True):
        assert torch.equal(g, k)
        torch.testing.assert_close(leaf.grad, k * 2, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backend", MSE_NATIVE)
def test_mse_inference_partial_and_empty(backend, gen):
    """No autograd (no gradient work, same loss), frozen inputs, and no rows (NaN loss, zero
    weight gradients, as torch.mean of nothing)."""
    x = torch.randn(50, 4, generator=gen)
    ws = [w.float() for w in _net(4, 8, 2, 2, gen=gen)]
    t = torch.rand(50, 2, generator=gen)
    want = ref.fused_mlp_mse(x, ws, t)
    with torch.no_grad():
        torch.testing.assert_close(fused_mlp_mse(x, ws, t, backend=backend), want)
    loss, y, gx, gw = torch.ops.fastgen.mlp_mse(x, ws, t, 1, 0, False, False)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(y, ref.fused_mlp(x, ws), rtol=2e-6, atol=1e-6)
    assert gx.numel() == 0 and all(g.numel() == 0 for g in gw)
    wf = [ws[0], ws[1].clone().requires_grad_(), ws[2]]
    g1, = torch.autograd.grad(fused_mlp_mse(x, wf, t, backend=backend), [wf[1]])
    torch.testing.assert_close(g1, torch.autograd.grad(ref.fused_mlp_mse(x, wf, t), [wf[1]])[0],
                               rtol=1e-5, atol=1e-7)
    we = [w.clone().requires_grad_() for w in ws]
    empty = fused_mlp_mse(x[:0], we, t[:0], backend=backend)
    assert empty.isnan() and empty.shape == ()
    empty.backward()
    assert all(w.grad is not None and not w.grad.any() for w in we)


@pytest.mark.parametrize("backend", MSE_NATIVE)
def test_mse_target_only_and_op_without_x_gradient(backend, gen):
    """A target that alone requires grad (no gradient work in the forward), and the op called
    with need_x=False for an x that requires grad (the backward computes what it lacks)."""
    x = torch.randn(40, 4, generator=gen)
    ws = [w.float() for w in _net(4, 8, 2, 2, gen=gen)]
    t = torch.rand(40, 2, generator=gen, requires_grad=True)
    got, = torch.autograd.grad(fused_mlp_mse(x, ws, t, backend=backend), t)
    want, = torch.autograd.grad(ref.fused_mlp_mse(x, ws, t), t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)
    xg = x.clone().requires_grad_()
    loss, *_ = torch.ops.fastgen.mlp_mse(xg, ws, t.detach(), 1, 0, True, False)
    got, = torch.autograd.grad(loss * 3, xg)
    want, = torch.autograd.grad(ref.fused_mlp_mse(xg, ws, t.detach()) * 3, xg)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("backend", MSE_NATIVE)
def test_mse_gradcheck_and_second_order(backend, gen):
    x = torch.randn(11, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    ws = [w.requires_grad_() for w in _net(4, 8, 2, 2, gen=gen)]
    t = torch.rand(11, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    for planar in (False, True):
        def f(x, t, *w, planar=planar):
            arg = _planar(x, 2) if planar else x
            return fused_mlp_mse(arg, list(w), t, output_activation="Sigmoid", backend=backend,
                                 planar=planar)

        assert torch.autograd.gradcheck(f, (x, t, *ws))
        assert torch.autograd.gradgradcheck(f, (x, t, *ws))


@pytest.mark.parametrize("backend", MSE_NATIVE)
def test_mse_deterministic_across_threads_and_compiles(backend, gen):
    x = torch.randn(5000, 8, generator=gen)
    ws = [w.float() for w in _net(8, 32, 3, 2, gen=gen)]
    t = torch.rand(5000, 3, generator=gen)
    _assert_same_for_any_thread_count(
        lambda: _mse_and_grads(x, ws, t, backend, "ReLU", "None", planar_f=2))
    f = torch.compile(lambda x, ws, t: fused_mlp_mse(x, ws, t, backend=backend), fullgraph=True)
    xs, wr = x[:100].requires_grad_(), [w.requires_grad_() for w in ws]
    loss = f(xs, wr, t[:100])
    want = ref.fused_mlp_mse(xs, wr, t[:100])
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-7)
    for a, b in zip(torch.autograd.grad(loss, [xs, *wr]), torch.autograd.grad(want, [xs, *wr])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_mse_bad_input(gen):
    x = torch.randn(4, 6, generator=gen)
    ws = [torch.randn(8, 6, generator=gen), torch.randn(2, 8, generator=gen)]
    t = torch.rand(4, 2, generator=gen)
    with pytest.raises(ValueError, match="target must be \\[4, 2\\]"):
        fused_mlp_mse(x, ws, t[:, :1])
    with pytest.raises(TypeError, match="target is torch.float64"):
        fused_mlp_mse(x, ws, t.double())
    with pytest.raises(TypeError, match="target must be a torch.Tensor"):
        fused_mlp_mse(x, ws, [[0.0, 0.0]] * 4)
    with pytest.raises(ValueError, match="weights\\[0\\] must be \\[N, 6\\]"):
        fused_mlp_mse(x, [torch.randn(8, 5), ws[1]], t)
    with pytest.raises(ValueError, match="planar x must be \\[G, M, F\\]"):
        fused_mlp_mse(x, ws, t, planar=True)
    with pytest.raises(ValueError, match="target must be \\[3, 2\\]"):     # planar [G, M, F]
        fused_mlp_mse(torch.randn(2, 3, 3), ws, t, planar=True)
    with pytest.raises(ValueError, match="weights\\[0\\] must be \\[N, 4\\]"):
        fused_mlp_mse(torch.randn(2, 4, 2), ws, t, planar=True)
    if MSE_NATIVE:
        with pytest.raises(RuntimeError, match="target must be a contiguous \\[4, 2\\]"):
            torch.ops.fastgen.mlp_mse(x, ws, torch.rand(2, 4).t(), 1, 0, True, True)
        with pytest.raises(RuntimeError, match="weights\\[0\\] must be a contiguous \\[N, 4\\]"):
            torch.ops.fastgen.mlp_mse(torch.randn(2, 4, 2), ws, t, 1, 0, True, True)
        with pytest.raises(RuntimeError, match="x must be a contiguous \\[M, K\\] or planar "
                                               "\\[G, M, F\\] tensor, got \\[2, 2, 2, 2\\]"):
            torch.ops.fastgen.mlp_mse(torch.randn(2, 2, 2, 2), ws, t, 1, 0, True, True)
        with pytest.raises(RuntimeError, match="planar \\[G, M, F\\] tensor, got \\[8, 2, 3\\] "
                                               "\\(not contiguous\\)"):
            torch.ops.fastgen.mlp_mse(torch.randn(2, 8, 3).transpose(0, 1), ws, t, 1, 0, True,
                                      True)
        with pytest.raises(RuntimeError, match="x must be a contiguous \\[M, K\\] tensor"):
            torch.ops.fastgen.mlp_fwd(torch.randn(2, 4, 2), ws, 1, 0, True)   # no planar here
