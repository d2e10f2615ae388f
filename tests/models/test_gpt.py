"""fastgen.models.GPT: the KV-cache generation path equals recomputing the sequence, training
lowers the loss, the stdlib corpus loads, bad input is refused."""

import pytest
import torch

from fastgen.data import decode, encode, stdlib_corpus
from fastgen.models import GPT, GPTConfig, train_gpt

CFG = GPTConfig(vocab_size=256, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, hidden=64,
                max_len=64)


def _recompute_greedy(model, prompt, n):
    seq = prompt
    with torch.inference_mode():
        for _ in range(n):
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    return seq


@pytest.mark.parametrize("batch", [1, 3])
def test_cached_generation_equals_recompute(batch, seed):
    torch.manual_seed(seed)
    model = GPT(CFG).eval()
    with torch.no_grad():  # larger weights than the init: logits far from ties
        for p in model.parameters():
            p.mul_(8)
    prompt = torch.randint(0, 256, (batch, 5))
    got = model.generate(prompt, 20, temperature=0.0)
    assert torch.equal(got, _recompute_greedy(model, prompt, 20))


def test_training_lowers_loss_and_sampling_is_seeded(seed):
    torch.manual_seed(seed)
    model = GPT(CFG)
    data = encode("the quick brown fox jumps over the lazy dog. " * 40)
    first = model.loss(data[:33][None]).item()
    res = train_gpt(model, data, steps=40, batch_size=8, seq_len=32,
                    generator=torch.Generator().manual_seed(seed))
    assert res.steps == 40 and res.loss < first - 1.0
    a = model.generate(encode("the ")[None], 10, top_k=5,
                       generator=torch.Generator().manual_seed(1))
    b = model.generate(encode("the ")[None], 10, top_k=5,
                       generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_stdlib_corpus_round_trip():
    data = stdlib_corpus(20000)
    assert data.dtype == torch.int64 and data.numel() == 20000 and int(data.max()) < 256
    assert decode(encode("héllo")) == "héllo"


def test_bad_input():
    model = GPT(CFG)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(torch.zeros(1, 60, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="sequence length"):
        model(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="dim \\(50\\) must be divisible"):
        GPTConfig(dim=50, n_heads=6)
    with pytest.raises(ValueError, match="more than seq_len"):
        train_gpt(model, torch.zeros(10, dtype=torch.long), steps=1, seq_len=32)
