"""The multi-turn tool-use agent loop, engine-independent and token-in/token-out (CLEANER.md, "The method").

One trajectory: generate an assistant turn until ``</tool_call>`` or end of turn, parse it, run the call in the
sandbox, append the rendered tool response (loss mask 0), repeat until a final answer, ``max_turns`` assistant
turns or ``max_response_tokens``. With SAAR on (:class:`cleaner.saar.SaarController`) a failed call is not
committed: the model sees its failed turn and the error as a temporary context and writes a retry; a retry with a
call replaces the failed turn at token level (shallow: old reasoning + new call; deep: the new turn), the
failed attempt and its error disappear, and the new call is executed in its place (chains collapse). Every token
in the output is a sampled token or a template/tool token -- generated text is never re-tokenised.

``Generator`` is any object with ``async generate(prompt_ids, SamplingParams) -> GenerationOutput``
(:class:`cleaner.engines.hf.HFGenerator`, or verl's server manager through :mod:`cleaner.engines.verl`).
Many trajectories run concurrently with :func:`run_agent_batch`; the generator batches their requests.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from cleaner.chat import ChatFormat
from cleaner.engines.base import Generator, SamplingParams
from cleaner.protocol import ParsedTurn, extract_boxed, format_exec_result, format_malformed_call, parse_assistant
from cleaner.saar import (
    SaarConfig,
    SaarController,
    TokenTrajectory,
    attempted_code,
    find_call_token_start,
    splice_tokens,
)

__all__ = ["AgentConfig", "Trajectory", "filter_long_prompts", "run_agent", "run_agent_batch"]


@dataclass(frozen=True)
class AgentConfig:
    """Rollout settings (CLEANER.md recipe: 16 turns, 20,480 response tokens, temperature 1.0, 256-char tool output)."""

    max_turns: int = 16
    max_response_tokens: int = 20480
    max_turn_tokens: int = 4096
    max_prompt_tokens: int = 2560
    temperature: float = 1.0
    top_p: float = 1.0
    tools_enabled: bool = True
    tool_timeout_s: float = 10.0
    tool_memory_mb: int = 1024
    max_tool_response_chars: int = 256
    saar: SaarConfig = field(default_factory=lambda: SaarConfig(enabled=False))
    logprobs: bool = False

    def __post_init__(self) -> None:
        for name in ("max_turns", "max_response_tokens", "max_turn_tokens", "max_prompt_tokens", "max_tool_response_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"agent.{name} must be >= 1, got {getattr(self, name)}")
        if self.tool_timeout_s <= 0 or self.tool_memory_mb <= 0:
            raise ValueError("agent.tool_timeout_s and agent.tool_memory_mb must be > 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, *, saar: SaarConfig | None = None) -> "AgentConfig":
        d = dict(d or {})
        if "saar" in d:
            raw = d.pop("saar")
            saar = raw if isinstance(raw, SaarConfig) else SaarConfig.from_dict(raw or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"agent: unknown field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**d, **({"saar": saar} if saar is not None else {}))


@dataclass
class Trajectory:
    prompt_ids: list[int]
    response_ids: list[int]
    response_mask: list[int]
    rollout_logprobs: list[float] | None  # None when not requested, not returned by the engine, or stale (splice)
    response_text: str
    answer: str | None
    finish_reason: str  # answer | no_answer | max_turns | length
    stats: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Run:
    """State of one rollout; methods are the steps of the loop."""

    def __init__(self, gen: Generator, sandbox: Any, fmt: ChatFormat, cfg: AgentConfig, seed: int):
        self.gen, self.sandbox, self.fmt, self.cfg, self.seed = gen, sandbox, fmt, cfg, seed
        self.n_generate = 0
        self.generated_tokens = 0
        self.logprobs: list[float] = []
        self.spliced = False
        self.logprobs_missing = False
        self.malformed = 0
        self.first_call_failed: bool | None = None  # the trajectory's very first tool call (comparable across arms)

    def sampling(self, max_new: int) -> SamplingParams:
        stops = self.fmt.stop_token_ids if self.cfg.tools_enabled else tuple(
            t for t in self.fmt.stop_token_ids if t != self.fmt.tool_call_close_id
        )
        # One seed per generate call of this trajectory: the draw is independent of batching and of timing.
        seed = (self.seed * 1_000_003 + self.n_generate) % (2**63)
        self.n_generate += 1
        return SamplingParams(
            temperature=self.cfg.temperature, top_p=self.cfg.top_p, max_new_tokens=max_new,
            stop_token_ids=stops, seed=seed, logprobs=self.cfg.logprobs,
        )

    async def generate(self, context: list[int], budget: int) -> tuple[list[int], list[float], str]:
        out = await self.gen.generate(context, self.sampling(min(self.cfg.max_turn_tokens, budget)))
        self.generated_tokens += len(out.token_ids)
        if out.logprobs is None:
            self.logprobs_missing = True  # never report made-up log-probs
        lps = out.logprobs if out.logprobs is not None else [0.0] * len(out.token_ids)
        return list(out.token_ids), list(lps), out.finish_reason

    async def execute(self, turn: ParsedTurn) -> tuple[str, bool]:
        """Run the turn's call; returns (tool response text, failed)."""
        if turn.call is None:
            self.malformed += 1
            if self.first_call_failed is None:
                self.first_call_failed = True
            return format_malformed_call(turn.malformed or "no tool call"), True
        res = await self.sandbox.run(turn.call.code, timeout_s=self.cfg.tool_timeout_s, memory_mb=self.cfg.tool_memory_mb)
        if self.first_call_failed is None:
            self.first_call_failed = not res.ok
        return format_exec_result(res, max_chars=self.cfg.max_tool_response_chars), not res.ok


async def run_agent(
    gen: Generator,
    sandbox: Any,
    fmt: ChatFormat,
    messages: Sequence[dict],
    cfg: AgentConfig,
    *,
    seed: int,
) -> Trajectory:
    """Roll out one trajectory for the prompt ``messages`` (system/user chat messages)."""
    run = _Run(gen, sandbox, fmt, cfg, seed)
    prompt_ids = fmt.prompt_ids(messages, tools=cfg.tools_enabled)
    if len(prompt_ids) > cfg.max_prompt_tokens:
        raise ValueError(f"prompt has {len(prompt_ids)} tokens, more than max_prompt_tokens={cfg.max_prompt_tokens}")
    traj = TokenTrajectory(list(prompt_ids))
    ctl = SaarController(cfg.saar, rng=random.Random(f"saar-gate:{seed}"))
    position = 0
    finish = "max_turns"
    answer: str | None = None
    pending: tuple[list[int], list[float], str] | None = None  # a turn already generated (no-correction retry)

    def commit(ids: list[int], lps: list[float], mask: int) -> None:
        traj.append(ids, mask=mask)
        run.logprobs.extend(lps if mask else [0.0] * len(ids))

    def budget() -> int:
        return cfg.max_response_tokens - len(traj.response_ids)

    while True:
        if position >= cfg.max_turns:
            finish = "max_turns"
            break
        if pending is not None:
            turn_ids, turn_lps, reason = pending
            pending = None
        else:
            if budget() <= 0:
                finish = "length"
                break
            turn_ids, turn_lps, reason = await run.generate(traj.ids, budget())
        turn = parse_assistant(fmt.decode(turn_ids))
        # A turn cut by the response budget ends the rollout: a call cut there is not executed (verl terminates
        # when the response is full), so it cannot count as a malformed call.
        out_of_room = reason == "length" and len(turn_ids) >= budget()
        if not cfg.tools_enabled or not turn.attempted_call or out_of_room:
            commit(turn_ids, turn_lps, 1)
            # Without tools a <tool_call> tag is plain text: the answer is the last \boxed{} of the whole turn.
            answer = turn.answer if cfg.tools_enabled else extract_boxed(turn.text)
            finish = "answer" if answer is not None else ("length" if reason == "length" else "no_answer")
            break
        result_text, failed = await run.execute(turn)
        decision = ctl.on_tool_result(position, failed=failed)
        old_code = attempted_code(turn)
        while decision.retry:
            # Temporary context: the failed turn and its error (step 3); it is never committed.
            error_ids = fmt.tool_response_ids(result_text)
            room = budget() - len(turn_ids) - len(error_ids)
            if room <= 0:
                ctl.abandon(position)
                break
            new_ids, new_lps, new_reason = await run.generate(traj.ids + turn_ids + error_ids, room)
            if new_reason == "length" and len(new_ids) >= room:
                # The response budget ran out inside the retry: no correction can be executed. Keep the failure;
                # the cut retry was generated on exactly that context and ends the rollout (as in step 5).
                ctl.abandon(position)
                commit(turn_ids, turn_lps, 1)
                commit(error_ids, [], 0)
                position += 1
                pending = (new_ids, new_lps, new_reason)
                break
            new_turn = parse_assistant(fmt.decode(new_ids))
            new_code = attempted_code(new_turn)
            old_start = find_call_token_start(turn_ids, tool_call_token_id=fmt.tool_call_open_id)
            new_start = find_call_token_start(new_ids, tool_call_token_id=fmt.tool_call_open_id)
            rep = ctl.on_retry_turn(
                position, old_code or "", new_code, boundaries_found=old_start is not None and new_start is not None
            )
            if rep is None:
                # No correction (step 5): keep the failure; the retry was generated on exactly that context,
                # so it becomes the next turn.
                commit(turn_ids, turn_lps, 1)
                commit(error_ids, [], 0)
                position += 1
                pending = (new_ids, new_lps, new_reason)
                break
            turn_ids = splice_tokens(turn_ids, new_ids, old_start, new_start, rep.kind)
            turn_lps = (turn_lps[:old_start] + new_lps[new_start:]) if rep.kind == "shallow" else new_lps
            run.spliced = True
            turn = new_turn
            result_text, failed = await run.execute(turn)
            decision = ctl.on_tool_result(position, failed=failed)
            old_code = new_code
        if pending is not None:
            continue
        if decision.note:
            result_text = f"{result_text}\n{decision.note}"
        commit(turn_ids, turn_lps, 1)
        response_ids = fmt.tool_response_ids(result_text)
        if len(response_ids) > budget():
            # The tool response does not fit in max_response_tokens: stop without it (verl's ToolAgentLoop).
            finish = "length"
            break
        commit(response_ids, [], 0)
        position += 1

    saar_stats = ctl.finish().to_dict()
    n_turns = sum(1 for i, m in enumerate(traj.response_mask) if m == 1 and (i == 0 or traj.response_mask[i - 1] == 0))
    stats = {
        **saar_stats,
        "turns": n_turns,
        "generated_tokens": run.generated_tokens,
        "response_length": len(traj.response_ids),
        "model_tokens": sum(traj.response_mask),
        "malformed_calls": run.malformed,
        "spliced": run.spliced,
        "first_call_failed": run.first_call_failed,
        "finish_reason": finish,
    }
    logprobs = run.logprobs if cfg.logprobs and not run.spliced and not run.logprobs_missing else None
    return Trajectory(
        prompt_ids=list(prompt_ids),
        response_ids=list(traj.response_ids),
        response_mask=list(traj.response_mask),
        rollout_logprobs=logprobs,
        response_text=fmt.decode(traj.response_ids),
        answer=answer,
        finish_reason=finish,
        stats=stats,
    )


def filter_long_prompts(rows: Sequence[dict], fmt: ChatFormat, cfg: AgentConfig) -> tuple[list[dict], list[int]]:
    """Rows whose rendered prompt fits ``max_prompt_tokens`` (verl's filter_overlong_prompts), and the indices of
    the rows dropped, so one overlong prompt cannot stop a whole run."""
    kept, dropped = [], []
    for i, row in enumerate(rows):
        if len(fmt.prompt_ids(row["prompt"], tools=cfg.tools_enabled)) <= cfg.max_prompt_tokens:
            kept.append(row)
        else:
            dropped.append(i)
    return kept, dropped


async def run_agent_batch(
    gen: Generator,
    sandbox: Any,
    fmt: ChatFormat,
    prompts: Sequence[Sequence[dict]],
    cfg: AgentConfig,
    *,
    seeds: Sequence[int],
) -> list[Trajectory]:
    """Roll out ``prompts`` concurrently (one trajectory each, seeded); the generator batches the requests."""
    if len(prompts) != len(seeds):
        raise ValueError("prompts and seeds differ in length")
    return list(await asyncio.gather(*(run_agent(gen, sandbox, fmt, p, cfg, seed=s) for p, s in zip(prompts, seeds))))
