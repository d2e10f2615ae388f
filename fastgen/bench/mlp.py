"""Benchmark cases for the fused MLP, and one whole Instant-NGP image-fitting training step.

fused_mlp rows: forward + backward (input and weight gradients) of the networks behind hash-grid
encodings, fastgen's kernel against the reference (F.linear + relu per layer, autograd).

fused_mlp_mse: the image network with an L2 loss on its output, loss and gradients (x and the
weights): fastgen's one-pass kernel against the reference MLP + loss through autograd.

image_fit: one training step of fastgen.models.NeuralImage as fastgen.models.image.fit_image
runs it (2^16 random pixels of a 512 x 512 picture, hash grid T = 2^15 as the demo's default,
bias-free 32-64-64-3 MLP, L2 loss, Adam; fastgen.models.image.train_step), with fastgen's
kernels (NeuralImage.loss: planar encoding into the fused MLP + loss) against the same model on
the reference kernels (hash grid and MLP; encoding, MLP and loss through autograd). Both models
start from the same weights, so the error column compares their first losses. This is the
per-step figure of ``fastgen demo image``, measured interleaved.
"""

from __future__ import annotations

import copy

import torch

from ..ops.mlp import fused_mlp, fused_mlp_mse
from ..reference.mlp import fused_mlp as reference
from ..reference.mlp import fused_mlp_mse as reference_mse
from ..testing.check import available_backends
from .core import Case

# (label, rows, widths, tier)
_SPECS = [
    ("image net 32-64-64-3", 1 << 16, (32, 64, 64, 3), "quick"),
    ("nerf density net 32-64-16", 1 << 18, (32, 64, 16), "full"),
]


def cases(device: str) -> list[Case]:
    backends = [b for b in available_backends("fused_mlp", device) if b != "reference"]
    out = [_mlp_case(device, backends[0] if backends else "reference", *s) for s in _SPECS]
    mse = [b for b in available_backends("fused_mlp_mse", device) if b != "reference"]
    out.append(_mse_case(device, mse[0] if mse else "reference", *_SPECS[0][:3]))
    out.append(_image_fit_case(device))
    return out


def _mlp_case(device, backend, label, n, widths, tier) -> Case:
    def setup():
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.rand(n, widths[0], generator=g, device=device).requires_grad_()
        ws = [((torch.rand(o, i, generator=g, device=device) * 2 - 1) * (6 / (i + o)) ** 0.5)
              .requires_grad_() for i, o in zip(widths[:-1], widths[1:])]
        gy = torch.randn(n, widths[-1], generator=g, device=device)
        return {"x": x, "ws": ws, "gy": gy}

    def run(fn):
        def f(s):
            y = fn(s["x"], s["ws"])
            return (y, *torch.autograd.grad(y, [s["x"], *s["ws"]], s["gy"]))
        return f

    def truth(s):   # the reference in float64 on the same inputs
        x = s["x"].detach().double().requires_grad_()
        ws = [w.detach().double().requires_grad_() for w in s["ws"]]
        return run(reference)({"x": x, "ws": ws, "gy": s["gy"].double()})

    macs = n * sum(i * o for i, o in zip(widths[:-1], widths[1:]))
    return Case(op="fused_mlp", name=f"{label} {n} rows fwd+bwd", device=device,
                dtype=torch.float32, setup=setup,
                fastgen=run(lambda x, ws: fused_mlp(x, ws, backend=backend)),
                reference=run(reference), truth=truth, tier=tier, backend=backend,
                flops=6 * macs, items=n, item="rows")


def _mse_case(device, backend, label, n, widths) -> Case:
    """The MLP with its L2 loss, loss and gradients: fused_mlp_mse (forward, loss and backward
    per tile) against the reference loss through autograd."""
    def setup():
        s = _mlp_case(device, backend, label, n, widths, "quick").setup()
        g = torch.Generator(device=device).manual_seed(1)
        s["target"] = torch.rand(n, widths[-1], generator=g, device=device)
        return s

    def run(fn):
        def f(s):
            loss = fn(s["x"], s["ws"], s["target"])
            return (loss, *torch.autograd.grad(loss, [s["x"], *s["ws"]]))
        return f

    def truth(s):
        x = s["x"].detach().double().requires_grad_()
        ws = [w.detach().double().requires_grad_() for w in s["ws"]]
        return run(reference_mse)({"x": x, "ws": ws, "target": s["target"].double()})

    macs = n * sum(i * o for i, o in zip(widths[:-1], widths[1:]))
    return Case(op="fused_mlp_mse", name=f"{label} {n} rows L2 loss + grads", device=device,
                dtype=torch.float32, setup=setup,
                fastgen=run(lambda x, ws, t: fused_mlp_mse(x, ws, t, backend=backend)),
                reference=run(reference_mse), truth=truth, tier="quick", backend=backend,
                flops=6 * macs, items=n, item="rows")


def _image_fit_case(device) -> Case:
    from ..models.image import NeuralImage, adam, pixel_samples, train_step

    batch = 1 << 16

    def setup():
        torch.manual_seed(0)
        fast = NeuralImage(512, 512, log2_hashmap_size=15).to(device)
        slow = copy.deepcopy(fast)
        slow.encoding.backend = slow.mlp.backend = "reference"
        g = torch.Generator(device=device).manual_seed(0)
        image = torch.rand(512, 512, 3, generator=g, device=device)
        s = {"samples": pixel_samples(fast, image),
             "idx": torch.randint(0, 512 * 512, (batch,), generator=g, device=device)}
        for name, model in (("fast", fast), ("slow", slow)):
            s[name] = (model, adam(model.parameters()))
        return s

    def step(name):
        def f(s):
            model, opt = s[name]
            return (train_step(model, opt, s["samples"], s["idx"]),)
        return f

    return Case(op="image_fit", name=f"train step 512x512 {batch} px (grid T2^15 + MLP + Adam)",
                device=device, dtype=torch.float32, setup=setup, fastgen=step("fast"),
                reference=step("slow"), tier="full", backend="default", items=batch, item="px")
