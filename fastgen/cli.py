"""The ``fastgen`` command: ``fastgen info``, ``fastgen bench`` and ``fastgen demo``."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

__all__ = ["main"]


def _info(args) -> int:
    from .info import collect, format_info

    info = collect()
    if args.json:
        import json

        print(json.dumps(info, indent=2, default=str))
    else:
        print(format_info(info))
    return 0


def _bench(args) -> int:
    import torch

    from . import bench

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("fastgen bench: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    cases = bench.select(bench.all_cases(device), "full" if args.full else "quick", args.filter)
    if args.list:
        for c in cases:
            print(f"{c.id}  [{c.tier}]")
        return 0
    if not cases:
        print(f"fastgen bench: no case matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    meta = bench.metadata()
    results = bench.run(cases, repeats=args.repeats, warmup=args.warmup,
                        progress=not args.no_progress)
    print(f"\nfastgen bench ({'full' if args.full else 'quick'}) on {device}: torch "
          f"{meta['torch']}, {meta['threads']} threads, {meta['date']}, git {meta['git']}")
    print("median ms over interleaved rounds; x = speedup of fastgen (>1 is faster); errors "
          "against float64 (fastgen's, then the reference's own); floor = minimum traffic at "
          "the measured copy bandwidth\n")
    print(bench.format_table(results))
    if args.json:
        bench.write_json(args.json, results, meta)
        print(f"\nwrote {args.json}")
    if args.plot:
        bench.plot(args.plot, results)
        print(f"wrote {args.plot}")
    return 0






def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fastgen", description="fastgen: fused kernels for "
                                     "generative models. Commands: info, bench, demo.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, build flags, devices, backend per op")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_info)

    p = sub.add_parser("bench", help="time fastgen against the reference and peers")
    tier = p.add_mutually_exclusive_group()
    tier.add_argument("--quick", action="store_true", help="the quick tier (default; < 2 min "
                      "on 2 CPU cores)")
    tier.add_argument("--full", action="store_true", help="every case, large shapes included")
    p.add_argument("--filter", metavar="REGEX", help="only cases whose id matches, e.g. 'lrelu'")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="default: cuda when available, else cpu")
    p.add_argument("--repeats", type=int, default=7, help="timed rounds per case (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls first (default 2)")
    p.add_argument("--json", metavar="PATH", help="write results and metadata as JSON")
    p.add_argument("--plot", metavar="PATH", help="write a speedup chart (needs matplotlib)")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=_bench)

    from .demos import DEMOS, diffusion, gpt, image, nerf

    p = sub.add_parser("demo", help="end-to-end demos: " + ", ".join(DEMOS))
    demos = p.add_subparsers(dest="demo", required=True)
    d = demos.add_parser("image", help=DEMOS["image"])
    image.add_arguments(d)
    d.set_defaults(func=image.run)
    d = demos.add_parser("diffusion", help=DEMOS["diffusion"])
    diffusion.add_arguments(d)
    d.set_defaults(func=diffusion.run)
    d = demos.add_parser("gpt", help=DEMOS["gpt"])
    gpt.add_arguments(d)
    d.set_defaults(func=gpt.run)
    d = demos.add_parser("nerf", help=DEMOS["nerf"])
    nerf.add_arguments(d)
    d.set_defaults(func=nerf.run)

    args = parser.parse_args(argv)
    if getattr(args, "repeats", 1) < 1 or getattr(args, "warmup", 1) < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
