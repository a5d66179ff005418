"""The agent loop (CLEANER.md "The method"): exact token sequences, masks and stats with a scripted generator.

A :class:`ScriptedGenerator` replays scripted assistant turns (encoded with the tiny tokenizer, cut at the stop
tokens and ``max_new_tokens`` the agent asks for, as a real engine would) and records every context it was asked
to continue. Tool calls run in the REAL sandbox. Expected sequences are built from ChatFormat segments:
assistant text ids (mask 1) + tool response ids (mask 0) + ...
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Sequence

import pytest

from cleaner.agent import AgentConfig, Trajectory, run_agent, run_agent_batch
from cleaner.chat import END_OF_TURN, ChatFormat
from cleaner.engines.base import GenerationOutput, Generator, SamplingParams
from cleaner.protocol import format_exec_result, format_malformed_call, parse_assistant
from cleaner.saar import SaarConfig, attempted_note_text, similarity

SAAR_ON = SaarConfig(enabled=True, gamma=0.5, max_retries=3, rollback_probability=1.0)
SAAR_OFF = SaarConfig(enabled=False)
TIMEOUT_S = 5.0
MEMORY_MB = 512


def make_cfg(saar: SaarConfig = SAAR_ON, **kw) -> AgentConfig:
    return AgentConfig(saar=saar, tool_timeout_s=TIMEOUT_S, tool_memory_mb=MEMORY_MB, **kw)


@dataclass
class Call:
    """One generate request the scripted generator served."""

    question: str
    context: list[int]
    sampling: SamplingParams
    output: GenerationOutput


class ScriptedGenerator:
    """A :class:`cleaner.engines.base.Generator` that replays scripted assistant turns, one per request.

    ``scripts`` maps a user question to the texts of its assistant turns (retries included, in the order the
    agent asks for them); the question is found in the request's context, so many trajectories can run
    concurrently. A turn is encoded, cut after the first of ``sampling.stop_token_ids`` (finish ``stop``) and at
    ``sampling.max_new_tokens`` (finish ``length``), like a real engine. With ``sampling.logprobs`` each token
    gets a distinct fake log-prob so tests can follow where every token went.
    """

    def __init__(self, fmt: ChatFormat, scripts: dict[str, Sequence[str]], *, latency_s: float = 0.0):
        self.fmt = fmt
        self.scripts = {q: list(turns) for q, turns in scripts.items()}
        self.used = {q: 0 for q in scripts}
        self.calls: list[Call] = []
        self.latency_s = latency_s
        self.in_flight = 0
        self.max_in_flight = 0

    def _question(self, context: Sequence[int]) -> str:
        text = self.fmt.decode(context)
        found = [q for q in self.scripts if f"<|im_start|>user\n{q}{END_OF_TURN}" in text]
        if len(found) != 1:
            raise AssertionError(f"context matches {len(found)} scripted questions: {text[:300]!r}")
        return found[0]

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> GenerationOutput:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.latency_s:
                await asyncio.sleep(self.latency_s)
            q = self._question(prompt_ids)
            k = self.used[q]
            if k >= len(self.scripts[q]):
                raise AssertionError(f"script for {q!r} exhausted after {k} turns")
            self.used[q] = k + 1
            ids = self.fmt.encode(self.scripts[q][k])
            stop = next((i for i, t in enumerate(ids) if t in sampling.stop_token_ids), None)
            finish = "stop"
            if stop is not None:
                ids = ids[: stop + 1]
            if len(ids) > sampling.max_new_tokens:
                ids, finish = ids[: sampling.max_new_tokens], "length"
            elif stop is None:
                raise AssertionError(f"scripted turn has no stop token: {self.scripts[q][k]!r}")
            lps = [-(k * 1000 + i + 1) / 1e4 for i in range(len(ids))] if sampling.logprobs else None
            out = GenerationOutput(ids, lps, finish)
            self.calls.append(Call(q, list(prompt_ids), sampling, out))
            return out
        finally:
            self.in_flight -= 1

    def remaining(self, question: str) -> int:
        return len(self.scripts[question]) - self.used[question]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def box():
    from cleaner.sandbox import Sandbox

    sandbox = Sandbox(workers=2)
    yield sandbox
    sandbox.close()


def call_turn(fmt: ChatFormat, reasoning: str, code: str) -> str:
    """An assistant call turn as the model emits it (ends right after ``</tool_call>``)."""
    return fmt.assistant_text(reasoning, code)


def final_turn(text: str) -> str:
    return text + END_OF_TURN


def user(q: str) -> list[dict]:
    return [{"role": "user", "content": q}]


async def tool_text(box, code: str, cfg: AgentConfig) -> str:
    """What the agent shows for ``code`` (same sandbox, same formatting): the expected tool response text."""
    res = await box.run(code, timeout_s=cfg.tool_timeout_s, memory_mb=cfg.tool_memory_mb)
    return format_exec_result(res, max_chars=cfg.max_tool_response_chars)


def expected(fmt: ChatFormat, *segments: tuple[str, str]) -> tuple[list[int], list[int]]:
    """Concatenate ``("model", text)`` (mask 1) and ``("tool", result text)`` (mask 0) segments."""
    ids: list[int] = []
    mask: list[int] = []
    for kind, text in segments:
        seg = fmt.encode(text) if kind == "model" else fmt.tool_response_ids(text)
        ids += seg
        mask += [1 if kind == "model" else 0] * len(seg)
    return ids, mask


def assert_sequence(traj: Trajectory, fmt: ChatFormat, ids: list[int], mask: list[int]) -> None:
    assert traj.response_ids == ids, f"\nexpected {fmt.decode(ids)!r}\n     got {traj.response_text!r}"
    assert traj.response_mask == mask
    assert traj.response_text == fmt.decode(ids)
    assert traj.stats["response_length"] == len(ids)
    assert traj.stats["model_tokens"] == sum(mask)


def saar_counts(traj: Trajectory) -> dict:
    keys = ("triggered", "recovered", "failed", "shallow", "deep", "retries", "tool_calls_before",
            "tool_failures_before", "tool_calls_after", "tool_failures_after", "first_attempt_calls",
            "first_attempt_failures")
    return {k: traj.stats[k] for k in keys}


def counts(**kw) -> dict:
    base = dict(triggered=0, recovered=0, failed=0, shallow=0, deep=0, retries=0, tool_calls_before=0,
                tool_failures_before=0, tool_calls_after=0, tool_failures_after=0, first_attempt_calls=0,
                first_attempt_failures=0)
    base.update(kw)
    return base


# Programs (real sandbox runs).
OK_CODE = "print(6*7)"
NAME_ERR = "x = 6\nprint(x * y)"
NAME_FIX = "x = 6\nprint(x * 7)"
NO_ISPRIME = "import math\nprint(math.isprime(7))"
TRIAL_DIV = "print(all(7 % d for d in range(2, 7)))"


def test_scripted_generator_is_a_generator(chat_format):
    gen = ScriptedGenerator(chat_format, {"q": ["a" + END_OF_TURN]})
    assert isinstance(gen, Generator)


# ------------------------------------------------------------------------------------------------ clean
async def test_clean_trajectory(chat_format, box):
    fmt, cfg, q = chat_format, make_cfg(), "What is 6*7?"
    t1 = call_turn(fmt, "I will compute it.", OK_CODE)
    t2 = final_turn("The answer is \\boxed{42}.")
    gen = ScriptedGenerator(fmt, {q: [t1, t2]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=7)

    assert await tool_text(box, OK_CODE, cfg) == "42\n"
    ids, mask = expected(fmt, ("model", t1), ("tool", "42\n"), ("model", t2))
    assert_sequence(traj, fmt, ids, mask)
    assert traj.prompt_ids == fmt.prompt_ids(user(q))
    assert traj.answer == "42" and traj.finish_reason == "answer"
    assert saar_counts(traj) == counts(tool_calls_before=1, tool_calls_after=1, first_attempt_calls=1)
    assert traj.stats["turns"] == 2 and traj.stats["gate_open"] is True and traj.stats["stop_reason"] is None
    assert traj.stats["generated_tokens"] == sum(mask) and traj.stats["spliced"] is False
    assert traj.rollout_logprobs is None  # not requested
    # The generator saw the prompt, then prompt + turn + tool response; seeds differ per request.
    assert [c.context for c in gen.calls] == [traj.prompt_ids,
                                              traj.prompt_ids + fmt.encode(t1) + fmt.tool_response_ids("42\n")]
    sp = [c.sampling for c in gen.calls]
    assert fmt.tool_call_close_id in sp[0].stop_token_ids and fmt.end_of_turn_id in sp[0].stop_token_ids
    assert sp[0].seed != sp[1].seed and sp[0].max_new_tokens == cfg.max_turn_tokens
    assert (sp[0].temperature, sp[0].top_p) == (cfg.temperature, cfg.top_p)


async def test_seed_determines_sampling_seeds(chat_format, box):
    fmt, cfg, q = chat_format, make_cfg(), "What is 6*7?"
    script = [call_turn(fmt, "Compute.", OK_CODE), final_turn("\\boxed{42}")]
    seeds = []
    for seed in (1, 1, 2):
        gen = ScriptedGenerator(fmt, {q: script})
        await run_agent(gen, box, fmt, user(q), cfg, seed=seed)
        seeds.append([c.sampling.seed for c in gen.calls])
    assert seeds[0] == seeds[1] and seeds[0] != seeds[2]


# ------------------------------------------------------------------------------------------------ SAAR off
async def test_saar_off_keeps_failure(chat_format, box):
    fmt, cfg, q = chat_format, make_cfg(SAAR_OFF), "Compute x times seven."
    t1 = call_turn(fmt, "I multiply x by y.", NAME_ERR)
    t2 = call_turn(fmt, "Use 7 instead.", NAME_FIX)
    t3 = final_turn("\\boxed{42}")
    gen = ScriptedGenerator(fmt, {q: [t1, t2, t3]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)

    err = await tool_text(box, NAME_ERR, cfg)
    assert "NameError" in err
    ids, mask = expected(fmt, ("model", t1), ("tool", err), ("model", t2), ("tool", "42\n"), ("model", t3))
    assert_sequence(traj, fmt, ids, mask)
    assert saar_counts(traj) == counts(tool_calls_before=2, tool_failures_before=1, tool_calls_after=2,
                                       tool_failures_after=1, first_attempt_calls=2, first_attempt_failures=1)
    assert traj.stats["gate_open"] is False and traj.stats["turns"] == 3 and traj.answer == "42"
    assert len(gen.calls) == 3


async def test_gate_closed_keeps_failure(chat_format, box):
    fmt, q = chat_format, "Compute x times seven."
    cfg = make_cfg(SaarConfig(enabled=True, rollback_probability=0.0))
    t1, t2, t3 = call_turn(fmt, "x*y.", NAME_ERR), call_turn(fmt, "x*7.", NAME_FIX), final_turn("\\boxed{42}")
    gen = ScriptedGenerator(fmt, {q: [t1, t2, t3]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)
    err = await tool_text(box, NAME_ERR, cfg)
    ids, mask = expected(fmt, ("model", t1), ("tool", err), ("model", t2), ("tool", "42\n"), ("model", t3))
    assert_sequence(traj, fmt, ids, mask)
    assert traj.stats["gate_open"] is False and traj.stats["retries"] == 0 and traj.stats["tool_failures_after"] == 1
    assert traj.stats["spliced"] is False


# ------------------------------------------------------------------------------------------------ repairs
async def test_shallow_repair(chat_format, box):
    fmt, cfg, q = chat_format, make_cfg(), "Compute x times seven."
    assert similarity(NAME_ERR, NAME_FIX) >= 0.5
    old_reasoning, new_reasoning = "I multiply x by seven.", "Oops, y is undefined; I will use 7."
    t1 = call_turn(fmt, old_reasoning, NAME_ERR)
    retry = call_turn(fmt, new_reasoning, NAME_FIX)
    t3 = final_turn("So \\boxed{42}.")
    gen = ScriptedGenerator(fmt, {q: [t1, retry, t3]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)

    err = await tool_text(box, NAME_ERR, cfg)
    spliced = call_turn(fmt, old_reasoning, NAME_FIX)  # ORIGINAL reasoning + the NEW call
    ids, mask = expected(fmt, ("model", spliced), ("tool", "42\n"), ("model", t3))
    assert_sequence(traj, fmt, ids, mask)
    for gone in ("NameError", "Traceback", new_reasoning, "x * y"):
        assert gone not in traj.response_text
    assert saar_counts(traj) == counts(triggered=1, recovered=1, shallow=1, retries=1, tool_calls_before=2,
                                       tool_failures_before=1, tool_calls_after=1, first_attempt_calls=1,
                                       first_attempt_failures=1)
    assert traj.stats["spliced"] is True and traj.stats["turns"] == 2 and traj.answer == "42"
    # The retry was generated on the temporary context: prompt + failed turn + its error.
    p = traj.prompt_ids
    assert gen.calls[1].context == p + fmt.encode(t1) + fmt.tool_response_ids(err)
    assert gen.calls[2].context == p + ids[: len(ids) - len(fmt.encode(t3))]


async def test_deep_repair(chat_format, box):
    fmt, cfg, q = chat_format, make_cfg(), "Is 7 prime?"
    assert similarity(NO_ISPRIME, TRIAL_DIV) < 0.5
    t1 = call_turn(fmt, "math can test primality.", NO_ISPRIME)
    retry = call_turn(fmt, "math has no isprime; trial division instead.", TRIAL_DIV)
    t3 = final_turn("\\boxed{yes}")
    gen = ScriptedGenerator(fmt, {q: [t1, retry, t3]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)

    err = await tool_text(box, NO_ISPRIME, cfg)
    assert "AttributeError" in err
    ids, mask = expected(fmt, ("model", retry), ("tool", "True\n"), ("model", t3))  # the retry turn whole
    assert_sequence(traj, fmt, ids, mask)
    assert "math.isprime" not in traj.response_text and "AttributeError" not in traj.response_text
    assert saar_counts(traj) == counts(triggered=1, recovered=1, deep=1, retries=1, tool_calls_before=2,
                                       tool_failures_before=1, tool_calls_after=1, first_attempt_calls=1,
                                       first_attempt_failures=1)
    assert gen.calls[1].context == traj.prompt_ids + fmt.encode(t1) + fmt.tool_response_ids(err)


async def test_chain_collapses_to_one_turn(chat_format, box):
    """Deep fix that fails again (SyntaxError), then a shallow fix of THAT attempt succeeds."""
    fmt, cfg, q = chat_format, make_cfg(), "Is 7 prime?"
    broken_fix = TRIAL_DIV[:-1]  # unclosed parenthesis
    assert similarity(NO_ISPRIME, broken_fix) < 0.5 <= similarity(broken_fix, TRIAL_DIV)
    t1 = call_turn(fmt, "math can test primality.", NO_ISPRIME)
    r1 = call_turn(fmt, "Trial division instead.", broken_fix)
    r2 = call_turn(fmt, "Close the parenthesis.", TRIAL_DIV)
    t4 = final_turn("\\boxed{yes}")
    gen = ScriptedGenerator(fmt, {q: [t1, r1, r2, t4]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)

    err1, err2 = await tool_text(box, NO_ISPRIME, cfg), await tool_text(box, broken_fix, cfg)
    assert "SyntaxError" in err2
    collapsed = call_turn(fmt, "Trial division instead.", TRIAL_DIV)  # deep turn's reasoning + shallow call
    ids, mask = expected(fmt, ("model", collapsed), ("tool", "True\n"), ("model", t4))
    assert_sequence(traj, fmt, ids, mask)
    assert saar_counts(traj) == counts(triggered=1, recovered=1, shallow=1, deep=1, retries=2,
                                       tool_calls_before=3, tool_failures_before=2, tool_calls_after=1,
                                       first_attempt_calls=1, first_attempt_failures=1)
    p = traj.prompt_ids
    assert gen.calls[1].context == p + fmt.encode(t1) + fmt.tool_response_ids(err1)
    # The second retry sees the REPLACED turn (the first fix) and ITS error, not the original failure.
    assert gen.calls[2].context == p + fmt.encode(r1) + fmt.tool_response_ids(err2)


async def test_exhausted_keeps_last_attempt_and_stops_saar(chat_format, box):
    fmt, q = chat_format, "Print a."
    cfg = make_cfg(SaarConfig(enabled=True, max_retries=2))
    t1 = call_turn(fmt, "Print a1.", "print(a1)")
    r1 = call_turn(fmt, "Maybe a2.", "print(a2)")
    r2 = call_turn(fmt, "Maybe a3.", "print(a3)")
    later = call_turn(fmt, "Try b1.", "print(b1)")  # fails after SAAR stopped: no retry
    t5 = final_turn("I give up: \\boxed{0}")
    gen = ScriptedGenerator(fmt, {q: [t1, r1, r2, later, t5]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)

    err_a3, err_b1 = await tool_text(box, "print(a3)", cfg), await tool_text(box, "print(b1)", cfg)
    kept = call_turn(fmt, "Print a1.", "print(a3)")  # shallow chain: original reasoning + last failed call
    ids, mask = expected(fmt, ("model", kept), ("tool", f"{err_a3}\n{attempted_note_text(3)}"),
                         ("model", later), ("tool", err_b1), ("model", t5))
    assert_sequence(traj, fmt, ids, mask)
    assert "attempted 3 times" in traj.response_text
    assert saar_counts(traj) == counts(triggered=1, failed=1, shallow=2, retries=2, tool_calls_before=4,
                                       tool_failures_before=4, tool_calls_after=2, tool_failures_after=2,
                                       first_attempt_calls=2, first_attempt_failures=2)
    assert traj.stats["stop_reason"] == "exhausted"
    assert len(gen.calls) == 5 and traj.answer == "0"
    # After exhaustion the later failure was committed directly: the final turn's context holds it.
    assert gen.calls[4].context == traj.prompt_ids + ids[: len(ids) - len(fmt.encode(t5))]


async def test_no_correction_keeps_failure_and_commits_retry(chat_format, box):
    fmt, cfg, q = chat_format, make_cfg(), "Compute x times seven."
    t1 = call_turn(fmt, "x times y.", NAME_ERR)
    answer = final_turn("I cannot run it, but it is \\boxed{42}")
    gen = ScriptedGenerator(fmt, {q: [t1, answer]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(logprobs=True), seed=0)

    err = await tool_text(box, NAME_ERR, cfg)
    ids, mask = expected(fmt, ("model", t1), ("tool", err), ("model", answer))
    assert_sequence(traj, fmt, ids, mask)
    assert saar_counts(traj) == counts(triggered=1, failed=1, retries=1, tool_calls_before=1,
                                       tool_failures_before=1, tool_calls_after=1, tool_failures_after=1,
                                       first_attempt_calls=1, first_attempt_failures=1)
    assert traj.stats["stop_reason"] == "no_correction" and traj.answer == "42" and traj.finish_reason == "answer"
    assert len(gen.calls) == 2  # the retry is committed as the next turn, not regenerated
    # Nothing was spliced: the rollout log-probs are exact (the retry was sampled on the committed context).
    assert traj.stats["spliced"] is False and traj.rollout_logprobs is not None
    model_lps = [lp for c in gen.calls for lp in c.output.logprobs]
    assert [lp for lp, m in zip(traj.rollout_logprobs, mask) if m] == model_lps
    assert all(lp == 0.0 for lp, m in zip(traj.rollout_logprobs, mask) if not m)


async def test_malformed_call_is_a_failure(chat_format, box):
    fmt, q = chat_format, "Print one."
    bad = 'Let me run it.\n<tool_call>\n{"name": "code_interpreter", "arguments": {"code": "print(1)"}\n</tool_call>'
    reason = parse_assistant(bad).malformed
    assert reason is not None and reason.startswith("tool call is not valid JSON")
    good = call_turn(fmt, "Fixed the JSON.", "print(1)")
    t3 = final_turn("\\boxed{1}")

    gen = ScriptedGenerator(fmt, {q: [bad, good, t3]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(SAAR_OFF), seed=0)
    ids, mask = expected(fmt, ("model", bad), ("tool", format_malformed_call(reason)), ("model", good),
                         ("tool", "1\n"), ("model", t3))
    assert_sequence(traj, fmt, ids, mask)
    assert traj.stats["malformed_calls"] == 1 and traj.stats["tool_failures_after"] == 1
    assert traj.stats["first_attempt_failures"] == 1 and traj.stats["tool_calls_after"] == 2

    # With SAAR the malformed call is repaired like any failure and disappears.
    gen = ScriptedGenerator(fmt, {q: [bad, good, t3]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(), seed=0)
    assert traj.stats["malformed_calls"] == 1 and traj.stats["recovered"] == 1
    assert traj.stats["tool_failures_after"] == 0 and "not valid JSON" not in traj.response_text
    assert traj.stats["shallow"] + traj.stats["deep"] == 1
    assert gen.calls[1].context[-len(fmt.tool_response_ids(format_malformed_call(reason))):] == \
        fmt.tool_response_ids(format_malformed_call(reason))


# ------------------------------------------------------------------------------------------------ limits
async def test_max_turns(chat_format, box):
    fmt, q = chat_format, "Loop."
    turns = [call_turn(fmt, f"Step {i}.", f"print({i})") for i in range(4)]
    gen = ScriptedGenerator(fmt, {q: turns})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_turns=2), seed=0)
    ids, mask = expected(fmt, ("model", turns[0]), ("tool", "0\n"), ("model", turns[1]), ("tool", "1\n"))
    assert_sequence(traj, fmt, ids, mask)
    assert traj.finish_reason == "max_turns" and traj.answer is None and traj.stats["turns"] == 2
    assert len(gen.calls) == 2

    # Retries do not count as turns: a repaired turn is one turn.
    gen = ScriptedGenerator(fmt, {q: [call_turn(fmt, "x*y", NAME_ERR), call_turn(fmt, "fix", NAME_FIX)] + turns})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_turns=1), seed=0)
    assert traj.finish_reason == "max_turns" and traj.stats["turns"] == 1 and traj.stats["recovered"] == 1
    assert len(gen.calls) == 2


async def test_max_turns_drops_pending_no_correction_turn(chat_format, box):
    fmt, q = chat_format, "Loop."
    t1, answer = call_turn(fmt, "x*y", NAME_ERR), final_turn("\\boxed{42}")
    gen = ScriptedGenerator(fmt, {q: [t1, answer]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_turns=1), seed=0)
    err = await tool_text(box, NAME_ERR, make_cfg())
    assert_sequence(traj, fmt, *expected(fmt, ("model", t1), ("tool", err)))
    assert traj.finish_reason == "max_turns" and traj.answer is None


async def test_max_response_tokens_cuts_the_final_turn(chat_format, box):
    fmt, q = chat_format, "What is 6*7?"
    t1, t2 = call_turn(fmt, "Compute.", OK_CODE), final_turn("The answer is \\boxed{42}.")
    n1, nt = len(fmt.encode(t1)), len(fmt.tool_response_ids("42\n"))
    limit = n1 + nt + 3
    gen = ScriptedGenerator(fmt, {q: [t1, t2]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_response_tokens=limit), seed=0)
    ids, mask = expected(fmt, ("model", t1), ("tool", "42\n"))
    ids, mask = ids + fmt.encode(t2)[:3], mask + [1, 1, 1]
    assert_sequence(traj, fmt, ids, mask)
    assert len(traj.response_ids) == limit
    assert traj.finish_reason == "length" and traj.answer is None
    assert [c.sampling.max_new_tokens for c in gen.calls] == [min(limit, 4096), 3]

    # max_turn_tokens caps each turn as well.
    gen = ScriptedGenerator(fmt, {q: [t1, t2]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_turn_tokens=n1), seed=0)
    assert traj.finish_reason == "answer" and all(c.sampling.max_new_tokens == n1 for c in gen.calls)


async def test_response_never_exceeds_max_response_tokens(chat_format, box):
    """The budget also bounds tool responses and turns cut inside a call (verl: terminate when full)."""
    fmt, q = chat_format, "What is 6*7?"
    t1, t2 = call_turn(fmt, "Compute.", OK_CODE), final_turn("\\boxed{42}")
    n1 = len(fmt.encode(t1))
    # The call turn fits, its tool response does not: stop without the response.
    gen = ScriptedGenerator(fmt, {q: [t1, t2]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_response_tokens=n1 + 2), seed=0)
    assert_sequence(traj, fmt, *expected(fmt, ("model", t1)))
    assert traj.finish_reason == "length"
    # The budget ends inside the call: the cut call is not executed (no spurious malformed-call failure).
    gen = ScriptedGenerator(fmt, {q: [t1, t2]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_response_tokens=n1 - 3), seed=0)
    assert traj.response_ids == fmt.encode(t1)[: n1 - 3] and traj.response_mask == [1] * (n1 - 3)
    assert traj.finish_reason == "length"
    assert traj.stats["tool_calls_before"] == 0 and traj.stats["malformed_calls"] == 0
    # A failed call whose retry has no room: the chain is abandoned and the failure kept, within budget.
    t_fail = call_turn(fmt, "x*y", NAME_ERR)
    err = await tool_text(box, NAME_ERR, make_cfg())
    limit = len(fmt.encode(t_fail)) + len(fmt.tool_response_ids(err))
    gen = ScriptedGenerator(fmt, {q: [t_fail, call_turn(fmt, "fix", NAME_FIX), t2]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_response_tokens=limit), seed=0)
    assert_sequence(traj, fmt, *expected(fmt, ("model", t_fail), ("tool", err)))
    assert traj.finish_reason == "length" and traj.stats["stop_reason"] == "abandoned"
    assert traj.stats["tool_failures_after"] == 1 and len(gen.calls) == 1


async def test_retry_cut_by_budget_keeps_failure(chat_format, box):
    """The budget ends inside a retry: the failure stays and the cut retry follows it (chain abandoned)."""
    fmt, q = chat_format, "Compute x times seven."
    t_fail, retry = call_turn(fmt, "x*y", NAME_ERR), call_turn(fmt, "fix", NAME_FIX)
    err = await tool_text(box, NAME_ERR, make_cfg())
    ids, mask = expected(fmt, ("model", t_fail), ("tool", err))
    limit = len(ids) + 5
    gen = ScriptedGenerator(fmt, {q: [t_fail, retry, final_turn("\\boxed{42}")]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(max_response_tokens=limit), seed=0)
    assert_sequence(traj, fmt, ids + fmt.encode(retry)[:5], mask + [1] * 5)
    assert traj.finish_reason == "length" and len(traj.response_ids) == limit
    assert traj.stats["stop_reason"] == "abandoned" and traj.stats["retries"] == 1
    assert traj.stats["tool_calls_before"] == 1 and traj.stats["tool_failures_after"] == 1
    assert traj.stats["malformed_calls"] == 0 and traj.stats["spliced"] is False


async def test_attempt_cap_stops_saar(chat_format, box):
    fmt, q = chat_format, "Print a."
    cfg = make_cfg(SaarConfig(enabled=True, max_retries=5, max_tool_attempts=2))
    t1, r1 = call_turn(fmt, "a1.", "print(a1)"), call_turn(fmt, "a2.", "print(a2)")
    t3 = final_turn("\\boxed{0}")
    gen = ScriptedGenerator(fmt, {q: [t1, r1, t3]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)
    err = await tool_text(box, "print(a2)", cfg)
    kept = call_turn(fmt, "a1.", "print(a2)")
    assert_sequence(traj, fmt, *expected(fmt, ("model", kept), ("tool", f"{err}\n{attempted_note_text(2)}"),
                                         ("model", t3)))
    assert traj.stats["stop_reason"] == "attempt_cap" and traj.stats["retries"] == 1 and traj.stats["failed"] == 1


async def test_engine_without_logprobs_gives_none(chat_format, box):
    class NoLogprobs(ScriptedGenerator):
        async def generate(self, prompt_ids, sampling):
            out = await super().generate(prompt_ids, sampling)
            return GenerationOutput(out.token_ids, None, out.finish_reason)

    fmt, q = chat_format, "What is 6*7?"
    gen = NoLogprobs(fmt, {q: [call_turn(fmt, "c", OK_CODE), final_turn("\\boxed{42}")]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(logprobs=True), seed=0)
    assert traj.answer == "42" and traj.rollout_logprobs is None


async def test_turn_cut_by_max_turn_tokens_is_a_malformed_call(chat_format, box):
    fmt, q = chat_format, "What is 6*7?"
    t1 = call_turn(fmt, "Compute.", OK_CODE)
    cut = len(fmt.encode(t1)) - 3
    gen = ScriptedGenerator(fmt, {q: [t1, final_turn("\\boxed{42}")]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(SAAR_OFF, max_turn_tokens=cut), seed=0)
    text = format_malformed_call("unclosed <tool_call> tag")
    ids, mask = expected(fmt, ("tool", text), ("model", final_turn("\\boxed{42}")))
    assert traj.response_ids == fmt.encode(t1)[:cut] + ids and traj.response_mask == [1] * cut + mask
    assert traj.stats["malformed_calls"] == 1 and traj.finish_reason == "answer"


def test_prompt_too_long_and_bad_config(chat_format, box):
    fmt = chat_format
    gen = ScriptedGenerator(fmt, {"q": [final_turn("x")]})
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        asyncio.run(run_agent(gen, box, fmt, user("q"), make_cfg(max_prompt_tokens=5), seed=0))
    with pytest.raises(ValueError, match="max_turns"):
        AgentConfig(max_turns=0)
    with pytest.raises(ValueError, match="unknown field"):
        AgentConfig.from_dict({"max_turn": 3})
    cfg = AgentConfig.from_dict({"max_turns": 3, "saar": {"gamma": 0.7}})
    assert cfg.max_turns == 3 and cfg.saar.gamma == 0.7 and cfg.saar.enabled


# ------------------------------------------------------------------------------------------------ no tools
async def test_tools_disabled(chat_format, box):
    fmt, q = chat_format, "What is 6*7?"
    text = "I would call " + call_turn(fmt, "", OK_CODE) + " but I know it: \\boxed{42}" + END_OF_TURN
    gen = ScriptedGenerator(fmt, {q: [text]})
    traj = await run_agent(gen, box, fmt, user(q), make_cfg(tools_enabled=False), seed=0)
    assert traj.prompt_ids == fmt.prompt_ids(user(q), tools=False) != fmt.prompt_ids(user(q))
    assert "<tools>" not in fmt.decode(traj.prompt_ids)
    assert fmt.tool_call_close_id not in gen.calls[0].sampling.stop_token_ids
    assert_sequence(traj, fmt, *expected(fmt, ("model", text)))  # one turn, the call is just text
    assert traj.stats["tool_calls_before"] == 0 and traj.stats["turns"] == 1
    assert traj.answer == "42" and traj.finish_reason == "answer"


# ------------------------------------------------------------------------------------------------ logprobs
async def test_rollout_logprobs(chat_format, box):
    fmt, q = chat_format, "Compute x times seven."
    cfg = make_cfg(logprobs=True)
    t1, t2 = call_turn(fmt, "Compute.", OK_CODE), final_turn("\\boxed{42}")
    gen = ScriptedGenerator(fmt, {q: [t1, t2]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)
    assert gen.calls[0].sampling.logprobs is True
    expect = gen.calls[0].output.logprobs + [0.0] * len(fmt.tool_response_ids("42\n")) + gen.calls[1].output.logprobs
    assert traj.rollout_logprobs == expect and len(expect) == len(traj.response_ids)

    # After a splice the sampled log-probs belong to a context that no longer exists: None (step 6).
    gen = ScriptedGenerator(fmt, {q: [call_turn(fmt, "x*y", NAME_ERR), call_turn(fmt, "fix", NAME_FIX), t2]})
    traj = await run_agent(gen, box, fmt, user(q), cfg, seed=0)
    assert traj.stats["spliced"] is True and traj.rollout_logprobs is None


# ------------------------------------------------------------------------------------------------ batches
def _batch_scripts(fmt: ChatFormat) -> dict[str, list[str]]:
    fin = final_turn("\\boxed{42}")
    return {
        "Q0 clean": [call_turn(fmt, "Compute.", OK_CODE), fin],
        "Q1 shallow": [call_turn(fmt, "x*y.", NAME_ERR), call_turn(fmt, "x*7.", NAME_FIX), fin],
        "Q2 deep": [call_turn(fmt, "isprime.", NO_ISPRIME), call_turn(fmt, "trial.", TRIAL_DIV), fin],
        "Q3 no correction": [call_turn(fmt, "x*y.", NAME_ERR), fin],
        "Q4 two calls": [call_turn(fmt, "One.", "print(1)"), call_turn(fmt, "Two.", "print(2)"), fin],
        "Q5 shallow": [call_turn(fmt, "a1.", "print(a1)"), call_turn(fmt, "fix.", "print(1)"), fin],
        "Q6 deep": [call_turn(fmt, "isprime.", NO_ISPRIME), call_turn(fmt, "trial.", TRIAL_DIV), fin],
        "Q7 clean": [call_turn(fmt, "Compute.", "print(7*6)"), fin],
    }


async def test_batch_equals_sequential(chat_format, box):
    """Concurrent rollouts give the same trajectories as one-by-one ones (seeded gate and sampling)."""
    fmt = chat_format
    cfg = make_cfg(SaarConfig(enabled=True, rollback_probability=0.5), logprobs=True)
    questions = list(_batch_scripts(fmt))
    seeds = list(range(100, 100 + len(questions)))
    gates = [random.Random(f"saar-gate:{s}").random() < 0.5 for s in seeds]
    assert any(gates) and not all(gates)  # both branches of the gate are exercised

    gen = ScriptedGenerator(fmt, _batch_scripts(fmt), latency_s=0.002)
    batch = await run_agent_batch(gen, box, fmt, [user(q) for q in questions], cfg, seeds=seeds)
    assert gen.max_in_flight > 1  # really concurrent
    sequential = []
    for q, s in zip(questions, seeds):
        one = ScriptedGenerator(fmt, _batch_scripts(fmt))
        sequential.append(await run_agent(one, box, fmt, user(q), cfg, seed=s))
    assert [t.to_dict() for t in batch] == [t.to_dict() for t in sequential]
    assert [t.stats["gate_open"] for t in batch] == gates
    for t, q, g in zip(batch, questions, gates):
        assert t.answer == "42" and t.prompt_ids == fmt.prompt_ids(user(q))
        if g and ("shallow" in q or "deep" in q):
            assert t.stats["recovered"] == 1 and t.stats["tool_failures_after"] == 0
    with pytest.raises(ValueError, match="differ in length"):
        await run_agent_batch(gen, box, fmt, [user("Q0 clean")], cfg, seeds=[1, 2])


@pytest.mark.slow
async def test_hf_engine_rollouts(tiny_model_dir, box):
    """The real HF engine with the (untrained) tiny model: invariants hold and batching does not change samples."""
    from cleaner.engines.hf import HFGenerator
    from cleaner.prompts import tool_schemas

    gen, tok = HFGenerator.from_pretrained(tiny_model_dir, device="cpu")
    fmt = ChatFormat(tok, tool_schemas())
    cfg = make_cfg(max_response_tokens=60, max_turn_tokens=24, max_turns=4, logprobs=True)
    prompts = [user(f"What is {a} * {b}?") for a, b in ((12, 34), (56, 78), (91, 23))]
    try:
        batch = await run_agent_batch(gen, box, fmt, prompts, cfg, seeds=[0, 1, 2])
        again = [await run_agent(gen, box, fmt, p, cfg, seed=s) for p, s in zip(prompts, (0, 1, 2))]
    finally:
        await gen.aclose()
    for b, a in zip(batch, again):
        db, da = b.to_dict(), a.to_dict()
        lb, la = db.pop("rollout_logprobs"), da.pop("rollout_logprobs")
        assert db == da
        if lb is not None or la is not None:  # batched forward passes differ in float rounding only
            assert lb == pytest.approx(la, abs=1e-4)
    for t, p in zip(batch, prompts):
        assert t.prompt_ids == fmt.prompt_ids(p)
        assert len(t.response_ids) == len(t.response_mask) <= cfg.max_response_tokens
        assert t.response_text == fmt.decode(t.response_ids)
        assert t.finish_reason in ("answer", "no_answer", "max_turns", "length")
        if t.rollout_logprobs is not None:
            assert len(t.rollout_logprobs) == len(t.response_ids)
            assert all(lp <= 0.0 for lp in t.rollout_logprobs)
