"""A hung e8kvd (SIGSTOP) makes e8kv.hf raise what the README's engine pattern catches.

A user's engine written per the README (``except e8kv.Unavailable:`` prefill from scratch)
crashed on a daemon stopped with ``kill -STOP``: the calls raised e8kv.DeadlineExceeded,
then no subclass of Unavailable. Now it is one (e8kv/errors.py): no answer in time is
unavailable for this request. A tiny random Llama (no download) and a daemon of its own;
checked against the previous errors.py: both pattern tests fail with DeadlineExceeded
escaping the except.
"""
import signal
import time

import pytest
import torch

import e8kv
import e8kv.hf as hf
from conftest import Daemon

C = 4


@pytest.fixture
def hung(tmp_path, tiny_llama):
    """(address, fingerprint, stored ids): a daemon holding 12 tokens, then SIGSTOPped;
    SIGCONT and a clean stop after the test."""
    d = Daemon(tmp_path)
    try:
        fp = hf.model_fingerprint(tiny_llama, model_id="hung")
        ids = torch.arange(12) % 64
        with e8kv.Client(d.address, timeout=60) as c:
            hf.store_prefix(c, tiny_llama, ids, hf.prefill(tiny_llama, ids[None])[1],
                            chunk_tokens=C, fingerprint=fp)
        d.proc.send_signal(signal.SIGSTOP)
        yield d.address, fp, ids
    finally:
        d.proc.send_signal(signal.SIGCONT)
        assert d.stop() == 0, d.logs()


def engine_step(client, model, fp, ids):
    """The README's engine pattern: restore what is stored, else (e8kvd down or hung)
    prefill everything; returns (decision, logits of the last position)."""
    try:
        r = hf.restore_prefix(client, model, ids, chunk_tokens=C, fingerprint=fp)
        logits, cache = hf.prefill(model, r.input_ids[:, r.n_cached:], r.attention_mask,
                                   r.cache)
        return r.decision, logits[:, -1]
    except e8kv.Unavailable:
        logits, cache = hf.prefill(model, ids[None])
        try:
            hf.store_prefix(client, model, ids, cache, chunk_tokens=C, fingerprint=fp)
        except e8kv.Unavailable:
            pass
        return "fallback", logits[:, -1]


def test_hf_hung_daemon_restore_falls_back_per_the_readme(hung, tiny_llama):
    address, fp, ids = hung
    prompt = torch.cat([ids, torch.tensor([5, 6, 7])])
    with e8kv.Client(address, timeout=1.0) as c:
        t0 = time.monotonic()
        decision, logits = engine_step(c, tiny_llama, fp, prompt)
        took = time.monotonic() - t0
    assert decision == "fallback"
    assert took < 60, took          # a hang bound only: 2 calls of a 1 s deadline
    with torch.no_grad():
        want = tiny_llama(input_ids=prompt[None]).logits[:, -1]
    torch.testing.assert_close(logits, want)


def test_hf_hung_daemon_errors_are_unavailable(hung, tiny_llama):
    address, fp, ids = hung
    with e8kv.Client(address, timeout=1.0) as c:
        with pytest.raises(e8kv.Unavailable) as ei:
            hf.restore_prefix(c, tiny_llama, ids, chunk_tokens=C, fingerprint=fp)
        assert isinstance(ei.value, e8kv.DeadlineExceeded)     # still told apart
        assert "no answer from e8kvd" in ei.value.message, ei.value.message
        with pytest.raises(e8kv.Unavailable):
            hf.store_prefix(c, tiny_llama, ids, hf.prefill(tiny_llama, ids[None])[1],
                            chunk_tokens=C, fingerprint=fp)
