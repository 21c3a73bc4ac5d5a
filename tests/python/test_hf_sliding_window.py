"""e8kv.hf with sliding-window attention (Mistral's ``sliding_window``, Qwen2 layers past
``max_window_layers``) and hybrid models, on tiny random models (no download), against a
real e8kvd.

transformers (>= 4.56) gives a sliding-window layer of the model's own cache a
DynamicSlidingWindowLayer that keeps only the last window - 1 tokens: past the window the
KV of the older tokens is gone, so a store from that cache cannot have them. e8kv.hf.prefill
keeps every token (a DynamicCache without the model config; the window stays in the
attention mask, so the logits are the same), and so does a restored cache: the model's
logits and greedy output, and the model's own windowed KV in its last window - 1 tokens.
The chunks here keep every layer unquantized (protect_first_layers = all), so the restored
KV can be compared bit for bit.
"""
import pytest
import torch
from transformers import (Lfm2Config, Lfm2ForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

import e8kv.hf as hf

C = 4           # chunk_tokens
W = 8           # sliding window: the model's own cache keeps W - 1 = 7 tokens per sliding layer
SMALL = dict(hidden_size=64, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
             vocab_size=64, max_position_embeddings=512)


def mistral():
    torch.manual_seed(0)
    return MistralForCausalLM(MistralConfig(num_hidden_layers=2, head_dim=32, sliding_window=W,
                                            **SMALL)).eval()


def qwen2_hybrid():
    """Layers 0-1 full attention, 2-3 sliding (Qwen2: use_sliding_window, max_window_layers)."""
    torch.manual_seed(1)
    return Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=4, sliding_window=W,
                                        use_sliding_window=True, max_window_layers=2,
                                        **SMALL)).eval()


MODELS = {"mistral": mistral, "qwen2_hybrid": qwen2_hybrid}


def ids_of(n, seed):
    return torch.randint(0, 64, (n,), generator=torch.Generator().manual_seed(seed))


def lossless_fp(model, name):
    return hf.model_fingerprint(model, model_id=f"sliding-{name}",
                                codec=dict(protect_first_layers=model.config.num_hidden_layers))


def own_cache(model, ids):
    """The cache the model's own forward builds (no cache passed in)."""
    return model(input_ids=ids[None], use_cache=True).past_key_values


@pytest.mark.parametrize("name", MODELS)
def test_hf_sliding_store_from_the_models_own_cache_past_the_window_is_refused(name, client):
    """The model's own cache past the window holds 7 of 20 tokens in its sliding layers: the
    store refuses before sending anything, naming the layer, the window and what to do (it
    said "cache holds 7 tokens, input_ids 20" for Mistral; for Qwen2, whose layer 0 is full,
    that check passed)."""
    model = MODELS[name]()
    fp = lossless_fp(model, name + "-refused")
    p = ids_of(20, 1)
    cache = own_cache(model, p)
    first = 0 if name == "mistral" else 2
    with pytest.raises(ValueError) as e:
        hf.store_prefix(client, model, p, cache, fingerprint=fp, chunk_tokens=C)
    msg = str(e.value)
    for want in (f"layer {first}", "sliding window of 8", "holds the last 7 of the 20 tokens",
                 "e8kv.hf.prefill", "DynamicCache()"):
        assert want in msg, (want, msg)
    assert client.lookup(fp, p.tolist(), chunk_tokens=C).matched_tokens == 0
    # within the window the model's own cache holds every token: stored as it is
    q = ids_of(7, 2)
    r = hf.store_prefix(client, model, q, own_cache(model, q), fingerprint=fp, chunk_tokens=C)
    assert r[0]["chunks_written"] == 2


@pytest.mark.parametrize("name", MODELS)
def test_hf_sliding_prefill_keeps_every_token_with_the_models_logits(name):
    model = MODELS[name]()
    p = ids_of(20, 3)
    logits, cache = hf.prefill(model, p[None], logits_to_keep=0)
    assert cache.get_seq_length() == 20
    assert all(k.shape[2] == 20 for k, _ in hf.cache_layers(cache))
    assert torch.equal(logits, model(input_ids=p[None]).logits)


@pytest.mark.parametrize("name", MODELS)
def test_hf_sliding_restore_past_the_window_is_the_models_own_kv(name, client):
    """Stored past the window from e8kv.hf.prefill's cache, restored for a longer prompt: the
    restored KV is bit for bit that of a prefill of the cached tokens (e8kv.hf.prefill's,
    every token), its last window - 1 tokens of each sliding layer are what the model's own
    windowed cache holds, and greedy generation from it equals generation after a full
    prefill. The conversation then grows and is stored again from the restored cache."""
    model = MODELS[name]()
    fp = lossless_fp(model, name)
    p = ids_of(30, 4)                               # 7 chunks of 4 + 2 tokens
    _, cache = hf.prefill(model, p[None])
    r = hf.store_prefix(client, model, p, cache, fingerprint=fp, chunk_tokens=C)[0]
    assert r["chunks_written"] == 8
    q = torch.cat([p, ids_of(5, 5)])
    rs = hf.restore_prefix(client, model, q, fingerprint=fp, chunk_tokens=C, policy="restore")
    assert rs.decision == "restore" and rs.n_cached == 28   # whole chunks, past the window
    assert rs.cache.get_seq_length() == 28
    exact = hf.cache_layers(hf.prefill(model, q[None, :28])[1])
    windowed = own_cache(model, q[:28])
    types = hf.layer_types(model)
    assert "sliding_attention" in types
    for i, ((kg, vg), (ke, ve)) in enumerate(zip(hf.cache_layers(rs.cache), exact)):
        assert kg.shape[2] == 28 and torch.equal(kg, ke) and torch.equal(vg, ve)
        kw, vw = windowed.layers[i].keys, windowed.layers[i].values
        assert kw.shape[2] == (W - 1 if types[i] == "sliding_attention" else 28)
        assert torch.equal(kg[:, :, -kw.shape[2]:], kw) and torch.equal(vg[:, :, -kw.shape[2]:], vw)
    # the rest of the prompt and 6 greedy tokens, against a full prefill
    full = model.generate(q[None], attention_mask=torch.ones_like(q[None]), max_new_tokens=6,
                          do_sample=False, pad_token_id=0)
    out = model.generate(rs.input_ids, attention_mask=rs.attention_mask, max_new_tokens=6,
                         do_sample=False, pad_token_id=0, **{rs.cache_kwarg: rs.cache})
    assert torch.equal(out, full)
    # next turn: the remaining tokens over a restored cache, then stored from that cache
    rs = hf.restore_prefix(client, model, q, fingerprint=fp, chunk_tokens=C, policy="restore")
    logits, grown = hf.prefill(model, rs.input_ids[:, 28:], cache=rs.cache, logits_to_keep=0)
    assert torch.allclose(logits, model(input_ids=q[None]).logits[:, 28:], atol=1e-5)
    r = hf.store_prefix(client, model, q, grown, fingerprint=fp, chunk_tokens=C)[0]
    assert r["skipped_tokens"] == 28 and r["chunks_written"] == 2
    assert client.lookup(fp, q.tolist(), chunk_tokens=C).matched_tokens == 35


def test_hf_hybrid_linear_attention_model_is_refused_up_front(client):
    """A hybrid model (LFM2: a convolution layer, then an attention layer) has layers without
    K/V: store and restore say so up front (the store said "is a DynamicCache, not a KV
    cache")."""
    torch.manual_seed(2)
    model = Lfm2ForCausalLM(Lfm2Config(num_hidden_layers=2, layer_types=["conv", "full_attention"],
                                       **SMALL)).eval()
    fp = hf.model_fingerprint(model, model_id="hybrid-lfm2")
    p = ids_of(12, 6)
    _, cache = hf.prefill(model, p[None])
    for call in (lambda: hf.store_prefix(client, model, p, cache, fingerprint=fp, chunk_tokens=C),
                 lambda: hf.restore_prefix(client, model, p, fingerprint=fp, chunk_tokens=C)):
        with pytest.raises(ValueError) as e:
            call()
        msg = str(e.value)
        for want in ("layer 0", "'conv'", "full_attention", "sliding_attention",
                     "recompute"):
            assert want in msg, (want, msg)
    assert client.lookup(fp, p.tolist(), chunk_tokens=C).matched_tokens == 0
