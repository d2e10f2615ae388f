"""``fastgen demo``: end-to-end demos, each a thin command over a :mod:`fastgen.models` wrapper."""

DEMOS = {"image": "fit a photo with a hash-grid encoding + MLP (Instant-NGP's 2-D task)",
         "diffusion": "train a tiny UNet denoiser on 16x16 shapes, sample with a fastgen.diffusion "
                      "scheduler, time its step against the reference",
         "gpt": "train a byte-level GPT on the Python stdlib's source, generate with the KV "
                "cache and compare tokens/s with recomputing the sequence",
         "nerf": "train an InstantNGP on an embedded procedural scene (occupancy-grid sampler, "
                 "fused renderer), report held-out PSNR, write a novel view"}
