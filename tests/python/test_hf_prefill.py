"""e8kv.hf.prefill computes the last position's logits only by default, as an engine does,
and the load-or-recompute decision is calibrated on that same forward (tiny random Llama).

It used to return fp32 logits of every position ([B, T, vocab]: 1.6 GB at 8K tokens for
SmolLM2), and calibrate timed that heavier forward as "recompute". Checked against the
previous hf.py: the shape and the forward-keyword tests fail.
"""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import e8kv.hf as hf

CFG = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=2, num_key_value_heads=1,
           head_dim=32, intermediate_size=64, vocab_size=64, max_position_embeddings=256)


class Recording(LlamaForCausalLM):
    """A Llama whose forwards record the logits_to_keep they were given."""

    def forward(self, *a, logits_to_keep=0, **kw):
        self.kept.append(logits_to_keep)
        return super().forward(*a, logits_to_keep=logits_to_keep, **kw)


def tiny(cls=LlamaForCausalLM):
    torch.manual_seed(0)
    m = cls(LlamaConfig(**CFG)).eval()
    m.kept = []
    return m


def test_hf_prefill_keeps_the_last_positions_logits_by_default():
    m = tiny()
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = m(input_ids=ids).logits
    last, cache = hf.prefill(m, ids)
    assert last.shape == (2, 1, 64)
    torch.testing.assert_close(last, full[:, -1:])
    assert cache.get_seq_length() == 9
    every, _ = hf.prefill(m, ids, logits_to_keep=0)
    assert every.shape == (2, 9, 64)
    torch.testing.assert_close(every, full)
    three, _ = hf.prefill(m, ids, logits_to_keep=3)
    torch.testing.assert_close(three, full[:, -3:])


def test_hf_prefill_and_calibrate_run_the_engines_forward(client):
    """Every forward prefill and calibrate run asks the model for 1 position's logits."""
    m = tiny(Recording)
    hf.prefill(m, torch.arange(7)[None])
    assert m.kept == [1]
    m.kept.clear()
    out = hf.calibrate(client, m, lengths=(16, 32), fingerprint=hf.model_fingerprint(
        m, model_id="prefill-calibrate"))
    assert sorted(out) == [16, 32]
    assert m.kept == [1, 1, 1], m.kept          # the warm-up and the two timed prefills
