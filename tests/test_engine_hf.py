"""The HF generator: KV-cache sampling equals a full forward pass, seeds make draws batch-independent."""

from __future__ import annotations

import asyncio

import pytest
import torch

from cleaner.engines.base import SamplingParams
from cleaner.engines.hf import HFGenerator


@pytest.fixture(scope="module")
def generator(tiny_model_dir):
    gen, tok = HFGenerator.from_pretrained(tiny_model_dir, device="cpu")
    return gen, tok


def test_logprobs_match_full_forward(generator):
    gen, tok = generator
    prompt = tok.encode("What is 12 * 34?", add_special_tokens=False)
    out = gen.generate_batch([prompt], [SamplingParams(max_new_tokens=30, seed=3, logprobs=True)])[0]
    assert len(out.token_ids) == len(out.logprobs) <= 30
    with torch.no_grad():
        logits = gen.model(torch.tensor([prompt + out.token_ids])).logits[0].log_softmax(-1)
    ref = [logits[len(prompt) - 1 + i, t].item() for i, t in enumerate(out.token_ids)]
    assert max(abs(a - b) for a, b in zip(ref, out.logprobs)) < 1e-4


def test_seeded_draw_independent_of_batch(generator):
    gen, tok = generator
    p1 = tok.encode("What is 12 * 34?", add_special_tokens=False)
    p2 = tok.encode("Let me add a much longer prompt here, 1 2 3 4 5 6 7 8 9", add_special_tokens=False)
    sp = SamplingParams(max_new_tokens=40, seed=11)
    alone = gen.generate_batch([p1], [sp])[0].token_ids
    batched = gen.generate_batch([p2, p1, p2], [SamplingParams(max_new_tokens=7, seed=1), sp,
                                               SamplingParams(max_new_tokens=40, seed=2)])
    assert batched[1].token_ids == alone
    assert len(batched[0].token_ids) == 7 and batched[0].finish_reason == "length"
    other = gen.generate_batch([p1], [SamplingParams(max_new_tokens=40, seed=12)])[0].token_ids
    assert other != alone


def test_stop_tokens_and_greedy(generator):
    gen, tok = generator
    prompt = tok.encode("hello", add_special_tokens=False)
    greedy = gen.generate_batch([prompt], [SamplingParams(max_new_tokens=20, temperature=0.0)])[0].token_ids
    first = greedy[0]
    # Making the greedy first token a stop token ends generation right after it (kept in the output).
    out = gen.generate_batch([prompt], [SamplingParams(max_new_tokens=20, temperature=0.0, stop_token_ids=(first,))])[0]
    assert out.token_ids == [first] and out.finish_reason == "stop"


def test_top_p_restricts_to_nucleus(generator):
    gen, tok = generator
    prompt = tok.encode("hello", add_special_tokens=False)
    greedy = gen.generate_batch([prompt], [SamplingParams(max_new_tokens=1, temperature=0.0)])[0].token_ids
    # top_p -> 0 keeps only the most likely token: every seed gives the greedy token.
    for seed in range(5):
        out = gen.generate_batch([prompt], [SamplingParams(max_new_tokens=1, top_p=1e-6, seed=seed)])[0]
        assert out.token_ids == greedy


async def test_async_requests_are_batched(generator):
    gen, tok = generator
    prompt = tok.encode("What is", add_special_tokens=False)
    before = dict(gen.stats)
    outs = await asyncio.gather(*(gen.generate(prompt, SamplingParams(max_new_tokens=5, seed=s)) for s in range(12)))
    await gen.aclose()
    assert len(outs) == 12 and all(1 <= len(o.token_ids) <= 5 for o in outs)
    assert gen.stats["requests"] - before["requests"] == 12
    assert gen.stats["batches"] - before["batches"] < 12  # gathered, not one forward loop per request
    alone = gen.generate_batch([prompt], [SamplingParams(max_new_tokens=5, seed=3)])[0]
    assert outs[3].token_ids == alone.token_ids


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        SamplingParams(max_new_tokens=0)


async def test_batch_settle_holds_the_batch_open_for_staggered_requests(tiny_model_dir):
    """Requests arriving a few ms apart (trajectories returning from tool calls) join one batch when
    batch_settle_s is set, and get the same tokens as when they ran in separate batches."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    prompt = tok.encode("What is", add_special_tokens=False)

    async def staggered(gen):
        async def one(s):
            await asyncio.sleep(0.01 * s)  # arrivals 10 ms apart
            return await gen.generate(prompt, SamplingParams(max_new_tokens=6, seed=s))

        try:
            return await asyncio.gather(*(one(s) for s in range(6)))
        finally:
            await gen.aclose()

    results = {}
    for settle in (0.0, 0.05):
        gen, _ = HFGenerator.from_pretrained(tiny_model_dir, device="cpu", batch_settle_s=settle)
        outs = await staggered(gen)
        results[settle] = ([o.token_ids for o in outs], gen.stats["batches"])
    assert results[0.05][1] == 1 and results[0.0][1] > 1
    assert results[0.05][0] == results[0.0][0]
