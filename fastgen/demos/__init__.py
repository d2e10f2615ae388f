"""``fastgen demo``: end-to-end demos, each a thin command over a :mod:`fastgen.models` wrapper."""

DEMOS = {"image": "fit a photo with a hash-grid encoding + MLP (Instant-NGP's 2-D task)"}
