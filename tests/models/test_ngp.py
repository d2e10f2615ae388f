"""InstantNGP on the embedded procedural scene: the scene and cameras, the SH encoding, a few
training steps, fastgen kernels vs reference kernels on the same model, the demo."""

import math

import pytest
import torch

from fastgen.cli import main
from fastgen.data.scene import camera_rays, look_at, make_scene, scene_field
from fastgen.models.ngp import InstantNGP, sh_encode, train_ngp
from fastgen.registry import use_backend


@pytest.fixture(scope="module")
def scene():
    return make_scene(n_views=6, size=16, n_test=2, n_steps=256)


def test_scene_images_cameras_and_split(scene):
    assert scene.images.shape == (6, 16, 16, 3) and scene.images.min() >= 0
    assert not set(scene.train) & set(scene.test) and len(scene.test) == 2
    assert (scene.images[:, 0, 0] > 0.99).all()  # corners see the white background
    c2w = look_at(torch.tensor([2.0, 0.5, 1.0]), torch.tensor([0.5, 0.5, 0.5]))
    rot = c2w[:, :3]
    torch.testing.assert_close(rot.T @ rot, torch.eye(3), atol=1e-6, rtol=0)
    o, d = camera_rays(c2w, scene.K, 16, 16)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(256))
    # the central pixel looks at the cube's centre
    centre = o[8 * 16 + 8] + d[8 * 16 + 8] * (torch.tensor([0.5, 0.5, 0.5]) - o[0]).norm()
    assert (centre - 0.5).abs().max() < 0.05
    sigma, rgb = scene_field(torch.tensor([[0.35, 0.40, 0.45], [0.02, 0.98, 0.98]]))
    assert sigma[0] > 0 and sigma[1] == 0 and (rgb[1] == 1).all()


def test_sh_encoding_is_orthonormal(gen):
    d = torch.nn.functional.normalize(torch.randn(200000, 3, generator=gen, dtype=torch.float64),
                                      dim=-1)
    y = sh_encode(d)
    gram = 4 * math.pi * y.T @ y / d.shape[0]
    torch.testing.assert_close(gram, torch.eye(16, dtype=torch.float64), atol=0.05, rtol=0)


def test_training_lowers_the_loss(scene):
    torch.manual_seed(0)
    model = InstantNGP(n_levels=6, log2_hashmap_size=12, finest_resolution=64, hidden=32,
                       grid_resolution=16)
    res = train_ngp(model, scene, seconds=None, steps=40, batch_rays=256, every=10)
    assert res.steps == 40 and res.history[-1][2] < res.history[0][2]
    o, d = scene.rays(scene.test[0])
    img = model.render_image(o, d, 16, 16, near=scene.near, far=scene.far)
    assert img.shape == (16, 16, 3) and torch.isfinite(img).all()


def test_fastgen_kernels_match_reference_kernels(scene):
    torch.manual_seed(0)
    model = InstantNGP(n_levels=6, log2_hashmap_size=12, finest_resolution=64, hidden=32,
                       grid_resolution=16)
    model.grid.binaries.fill_(True)
    o, d = scene.rays(scene.train[0])
    bg = torch.ones(3)
    fast, spr = model.render_rays(o, d, bg, scene.near, scene.far)
    with use_backend("reference", "hashgrid", "volrend", "march"):
        slow, spr_ref = model.render_rays(o, d, bg, scene.near, scene.far)
    assert spr == spr_ref
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)


def test_demo_nerf_tiny(tmp_path, capsys):
    assert main(["demo", "nerf", "--steps", "2", "--views", "4", "--test-views", "1",
                 "--size", "8", "--batch-rays", "64", "--reference-steps", "1",
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "held-out PSNR" in out and "reference kernels" in out
    assert (tmp_path / "novel_view.png").exists()
