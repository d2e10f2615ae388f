"""fastgen.generate against transformers' generate on tiny random models built from configs (no
download): greedy tokens identical, batch 1 and left-padded batches; plus sampling, eos, streamer
and bad input."""

import pytest
import torch

import fastgen

tf = pytest.importorskip("transformers")


def _model(kind="llama", seed=0, **over):
    torch.manual_seed(seed)
    common = dict(vocab_size=211, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    common.update(over)
    cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
           "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
           "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM)}[kind]
    return cls[1](cls[0](**common)).eval()


def _left_padded(gen, lengths, width, vocab):
    ids = torch.randint(3, vocab, (len(lengths), width), generator=gen)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, width - n:] = 1
        ids[i, :width - n] = 0
    return ids, mask


@pytest.mark.parametrize("kind,over", [
    ("llama", {}),
    ("llama", dict(num_key_value_heads=1, num_attention_heads=4)),   # MQA
    ("llama", dict(num_key_value_heads=4, rope_theta=500.0)),        # MHA, other theta
    ("mistral", dict(sliding_window=6)),                             # window shorter than text
    ("qwen2", {}),                                                   # q/k/v biases
])
def test_greedy_matches_transformers_batch1(kind, over, gen, seed):
    model = _model(kind, seed % 1000, **over)
    ids = torch.randint(3, 211, (1, 11), generator=gen)
    want = model.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=None)
    got = fastgen.generate(model, ids, max_new_tokens=24, eos_token_id=[])
    assert torch.equal(got, want)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_greedy_matches_transformers_left_padded_batch4(kind, gen, seed):
    model = _model(kind, seed % 1000)
    ids, mask = _left_padded(gen, [13, 1, 6, 10], 13, 211)
    want = model.generate(ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                          pad_token_id=0, eos_token_id=None)
    got = fastgen.generate(model, ids, attention_mask=mask, max_new_tokens=16, pad_token_id=0,
                           eos_token_id=[])
    assert torch.equal(got, want)


def test_eos_stops_rows_and_pads(gen, seed):
    model = _model(seed=seed % 1000)
    ids, mask = _left_padded(gen, [5, 9], 9, 211)
    free = fastgen.generate(model, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=[])
    eos = int(free[0, 9 + 2])  # row 0's third token becomes the eos
    want = model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                          eos_token_id=eos, pad_token_id=1)
    got = fastgen.generate(model, ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos,
                           pad_token_id=1)
    assert torch.equal(got, want)
    assert (got[0, 12:] == 1).all()


def test_sampling_reproducible_and_top_k1_is_greedy(gen, seed):
    model = _model(seed=seed % 1000)
    ids = torch.randint(3, 211, (2, 7), generator=gen)
    kw = dict(max_new_tokens=10, do_sample=True, temperature=0.9, top_p=0.9, eos_token_id=[])
    a = fastgen.generate(model, ids, generator=torch.Generator().manual_seed(seed), **kw)
    b = fastgen.generate(model, ids, generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(a, b)
    greedy = fastgen.generate(model, ids, max_new_tokens=10, eos_token_id=[])
    k1 = fastgen.generate(model, ids, max_new_tokens=10, do_sample=True, top_k=1,
                          eos_token_id=[])
    assert torch.equal(k1, greedy)


def test_streamer_receives_prompt_then_tokens(gen):
    model = _model()
    ids = torch.randint(3, 211, (1, 5), generator=gen)

    class Recorder:
        def __init__(self):
            self.chunks, self.ended = [], False

        def put(self, t):
            self.chunks.append(t.clone())

        def end(self):
            self.ended = True

    rec = Recorder()
    out = fastgen.generate(model, ids, max_new_tokens=6, eos_token_id=[], streamer=rec)
    assert rec.ended and torch.equal(rec.chunks[0], ids)
    assert torch.equal(torch.cat([c.reshape(-1) for c in rec.chunks[1:]]), out[0, 5:])


def test_bad_input(gen):
    model = _model()
    ids = torch.randint(3, 211, (2, 6), generator=gen)
    right_padded = torch.ones_like(ids)
    right_padded[0, -2:] = 0
    with pytest.raises(ValueError, match="left-padded"):
        fastgen.generate(model, ids, attention_mask=right_padded)
    with pytest.raises(ValueError, match="max_new_tokens"):
        fastgen.generate(model, ids, max_new_tokens=0)
    with pytest.raises(ValueError, match="input_ids must be a \\[B, L\\] integer"):
        fastgen.generate(model, ids.float())
    with pytest.raises(ValueError, match="at least one token"):
        fastgen.generate(model, ids, attention_mask=torch.zeros_like(ids))
    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(NotImplementedError, match="model_type 'gpt2' is not supported"):
        fastgen.generate(gpt2, ids % 50)


def test_qwen2_sliding_window_only_on_sliding_layers(gen, seed):
    # transformers slides only on layers >= max_window_layers
    model = _model("qwen2", seed % 1000, num_hidden_layers=3, use_sliding_window=True,
                   sliding_window=5, max_window_layers=1)
    ids = torch.randint(3, 211, (1, 9), generator=gen)
    want = model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None)
    got = fastgen.generate(model, ids, max_new_tokens=12, eos_token_id=[])
    assert torch.equal(got, want)


def test_warns_about_generation_config_it_does_not_apply(gen):
    model = _model()
    model.generation_config.repetition_penalty = 1.3
    with pytest.warns(UserWarning, match="repetition_penalty=1.3"):
        fastgen.generate(model, torch.randint(3, 211, (1, 4), generator=gen), max_new_tokens=2)
