"""NeRF building blocks with nerfacc's names and layouts: ray-box intersection, an occupancy grid
with a packed ray marcher (empty cells skipped by DDA), and volume rendering (fused compositing
with a closed-form backward) over packed or batched samples."""

from ..ops.raymarch import march, ray_aabb_intersect
from ..ops.volrend import (accumulate_along_rays, pack_info, render_transmittance_from_alpha,
                           render_transmittance_from_density, render_weight_from_alpha,
                           render_weight_from_density, rendering, volume_render)
from .occupancy import OccupancyGrid

__all__ = ["OccupancyGrid", "ray_aabb_intersect", "march", "volume_render", "rendering",
           "render_weight_from_density", "render_weight_from_alpha",
           "render_transmittance_from_density", "render_transmittance_from_alpha",
           "accumulate_along_rays", "pack_info"]
