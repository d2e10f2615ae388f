"""NeRF building blocks with nerfacc's names and layouts: volume rendering (fused compositing
with a closed-form backward) over packed or batched samples.

Ray marching with an occupancy grid (``OccupancyGrid``, ``ray_aabb_intersect``) is not built
yet (issue 5)."""

from ..ops.volrend import (accumulate_along_rays, pack_info, render_transmittance_from_alpha,
                           render_transmittance_from_density, render_weight_from_alpha,
                           render_weight_from_density, rendering, volume_render)

__all__ = ["volume_render", "rendering", "render_weight_from_density", "render_weight_from_alpha",
           "render_transmittance_from_density", "render_transmittance_from_alpha",
           "accumulate_along_rays", "pack_info"]
