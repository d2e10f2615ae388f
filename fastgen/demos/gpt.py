"""``fastgen demo gpt``: train a character-level (byte-level) GPT on the Python standard library's
own source, then generate with the KV cache.

Trains :class:`fastgen.models.GPT` for ``--seconds`` (or ``--steps``), printing progress (step,
seconds, loss, training tokens/s), then generates ``--new-tokens`` bytes after ``--prompt`` twice:
with fastgen's decode path (KVCache, decode_attention, fused sampling, decode_linear) and, for
comparison, by recomputing the whole sequence each token (no cache, what a naive loop does),
printing the tokens/s of each and the sample text.
"""

from __future__ import annotations

import time

import torch

__all__ = ["add_arguments", "run"]


def add_arguments(p) -> None:
    p.add_argument("--seconds", type=float, default=180.0, help="training time budget (180)")
    p.add_argument("--steps", type=int, help="stop training after this many steps instead")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step (16)")
    p.add_argument("--seq-len", type=int, default=128, help="training sequence length (128)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (3e-3)")
    p.add_argument("--layers", type=int, default=4, help="transformer blocks (4)")
    p.add_argument("--dim", type=int, default=192, help="model width (192; 6 heads, 2 kv heads)")
    p.add_argument("--prompt", default="def ", help="text to continue ('def ')")
    p.add_argument("--new-tokens", type=int, default=300, help="bytes to generate (300)")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0.8)")
    p.add_argument("--top-k", type=int, default=40, help="top-k filter (40)")
    p.add_argument("--corpus-bytes", type=int, default=4_000_000,
                   help="bytes of stdlib source to train on (4,000,000)")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ..data.text import decode, encode, stdlib_corpus
    from ..models.gpt import GPT, GPTConfig, train_gpt

    if args.new_tokens < 1 or args.seq_len < 2 or args.batch_size < 1:
        raise SystemExit("fastgen demo gpt: --new-tokens, --batch-size >= 1 and --seq-len >= 2")
    torch.manual_seed(args.seed)
    data = stdlib_corpus(args.corpus_bytes)
    prompt = encode(args.prompt)
    max_len = max(args.seq_len, prompt.numel() + args.new_tokens)
    heads = 6 if args.dim % 6 == 0 else 4
    cfg = GPTConfig(vocab_size=256, dim=args.dim, n_layers=args.layers, n_heads=heads,
                    n_kv_heads=2, hidden=(8 * args.dim // 3 + 63) // 64 * 64, max_len=max_len)
    model = GPT(cfg)
    n_weights = sum(p.numel() for p in model.parameters())
    budget = f"{args.steps} steps" if args.steps else f"{args.seconds:.0f} s"
    print(f"training a {n_weights:,}-parameter byte-level GPT ({cfg.n_layers} layers, dim "
          f"{cfg.dim}, {cfg.n_heads} heads / {cfg.n_kv_heads} kv heads) on {data.numel():,} "
          f"bytes of Python stdlib source for {budget}", flush=True)

    def progress(step, seconds, loss, tps):
        print(f"  step {step:6d}  {seconds:7.1f} s  loss {loss:.3f}  {tps:8.0f} tok/s",
              flush=True)

    g = torch.Generator().manual_seed(args.seed)
    res = train_gpt(model, data, seconds=args.seconds, steps=args.steps,
                    batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, generator=g,
                    progress=progress)
    print(f"trained {res.steps} steps in {res.seconds:.1f} s, loss {res.loss:.3f} "
          f"({res.tokens_per_s:.0f} training tok/s)")

    kw = dict(temperature=args.temperature, top_k=args.top_k)
    t0 = time.perf_counter()
    out = model.generate(prompt[None], args.new_tokens,
                         generator=torch.Generator().manual_seed(args.seed), **kw)
    t_cache = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive = _generate_no_cache(model, prompt[None], args.new_tokens,
                               torch.Generator().manual_seed(args.seed), **kw)
    t_naive = time.perf_counter() - t0
    same = "the same text" if torch.equal(out, naive) else "text that differs by rounding"
    print(f"generated {args.new_tokens} bytes: {args.new_tokens / t_cache:.0f} tok/s with the "
          f"KV cache, {args.new_tokens / t_naive:.0f} tok/s recomputing the sequence per token "
          f"({t_naive / t_cache:.1f}x; {same})")
    print("-" * 72)
    print(decode(out[0]))
    print("-" * 72)
    return 0


@torch.inference_mode()
def _generate_no_cache(model, prompt, n, generator, temperature, top_k):
    from ..ops.sampling import sample

    seq = prompt
    for _ in range(n):
        logits = model(seq)[:, -1].float()
        tok = sample(logits, temperature=temperature, top_k=top_k, generator=generator)
        seq = torch.cat([seq, tok[:, None]], 1)
    return seq
