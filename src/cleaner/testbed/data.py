"""toolcalc data: RL/eval rows and SFT tool-use trajectories produced by executing the programs for real.

Splits: test and validation problems are drawn first; train problems (for SFT and for RL, disjoint from each
other) exclude every test/validation problem by identity (family + parameters). Optionally some phrasings are
held out of training (``heldout_templates``): then test/validation use only those.

SFT trajectories (OpenAI chat format with ``tool_calls`` and ``tool`` messages carrying a ``status`` field) are
made by running every program in :mod:`cleaner.sandbox` and showing the model the real output or traceback,
formatted by :func:`cleaner.protocol.format_exec_result`:

- clean: the right program first;
- shallow: a slip (missing import, misremembered API, unclosed parenthesis, digit-limit overflow) followed by a
  near-identical fix, kept as an error-then-self-correction trace when the slip really failed;
- deep: a wrong approach (non-existent ``math.isprime``, deep recursion) replaced by a different program with
  different reasoning.
A first attempt that happens to succeed on this input (small n for the recursion, a short power for ``str``) stays
as a clean trace with that program, as it would for a real solver.

Regime knob ``recovery_demos`` (default 0: off). With today's data the SFT model recovers from a failed call far
less reliably than it solves a problem cleanly (test trajectories with a failure end correct ~47% of the time, clean
ones ~71%): outcome reward alone then already pushes RL away from errors. The paper's premise is the other regime,
where a failed-then-fixed trajectory ends correct as often as a clean one. ``recovery_demos = r`` adds about
``r * n_sft`` error-then-fix trajectories on problems of their own (drawn after every other split, so train, RL,
validation and test problems do not change) whose failed first attempt is context only (``"train": false``, loss
mask 0): the model sees many more fixes after a traceback without learning to make the error more often (the
slip/wrong rates of its first attempts stay those of ``slip_rate``/``wrong_rate``).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from cleaner.protocol import format_exec_result, render_tool_response
from cleaner.testbed.problems import FAMILIES, Attempt, Problem, make_problem, problem_key

__all__ = [
    "TestbedDataConfig",
    "build_rl_row",
    "generate_problems",
    "make_sft_traces",
    "testbed_instruction",
    "trace_summary",
]

INSTRUCTION = "Use the code_interpreter tool to compute exactly, then give the final answer in \\boxed{}."


def testbed_instruction() -> str:
    return INSTRUCTION


@dataclass(frozen=True)
class TestbedDataConfig:
    """Sizes and behaviour rates of the generated testbed data (config section ``testbed.data``)."""

    seed: int = 0
    families: dict[str, float] = field(default_factory=lambda: {name: 1.0 for name in FAMILIES})
    n_sft: int = 8000
    n_rl_train: int = 2000
    n_val: int = 64
    n_test: int = 200
    slip_rate: float = 0.35
    wrong_rate: float = 0.35
    heldout_templates: bool = False
    recovery_demos: float = 0.0
    tool_timeout_s: float = 2.0
    tool_memory_mb: int = 512
    max_tool_response_chars: int = 256
    workers: int = 2

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "TestbedDataConfig":
        d = dict(d or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"testbed.data: unknown field(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        cfg = cls(**d)
        bad = sorted(set(cfg.families) - set(FAMILIES))
        if bad:
            raise ValueError(f"testbed.data.families: unknown family {bad}; known: {sorted(FAMILIES)}")
        if not cfg.families or any(w < 0 for w in cfg.families.values()) or sum(cfg.families.values()) <= 0:
            raise ValueError("testbed.data.families: weights must be >= 0 with a positive sum")
        for name in ("slip_rate", "wrong_rate"):
            if not 0 <= getattr(cfg, name) <= 1:
                raise ValueError(f"testbed.data.{name} must be in [0, 1]")
        if cfg.slip_rate + cfg.wrong_rate > 1:
            raise ValueError("testbed.data.slip_rate + wrong_rate must be <= 1")
        if cfg.recovery_demos < 0:
            raise ValueError("testbed.data.recovery_demos must be >= 0")
        for name in ("n_sft", "n_rl_train", "n_val", "n_test"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"testbed.data.{name} must be >= 0")
        return cfg


def _templates_for(split: str, family: str, heldout: bool) -> tuple[int, ...] | None:
    if not heldout:
        return None
    n = len(FAMILIES[family].templates)
    return (n - 1,) if split in ("val", "test") else tuple(range(n - 1))


def generate_problems(cfg: TestbedDataConfig) -> dict[str, list[Problem]]:
    """Disjoint problem lists for the splits ``test``, ``val``, ``sft``, ``rl_train`` and, with ``recovery_demos``,
    ``sft_recovery`` (the recovery demonstrations); deterministic, each split from its own stream."""
    names = [n for n, w in cfg.families.items() if w > 0]
    weights = [cfg.families[n] for n in names]
    seen: set[str] = set()
    out: dict[str, list[Problem]] = {}
    for offset, (split, count) in enumerate(
        (("test", cfg.n_test), ("val", cfg.n_val), ("sft", cfg.n_sft), ("rl_train", cfg.n_rl_train))
        + ((("sft_recovery", round(cfg.recovery_demos * cfg.n_sft)),) if cfg.recovery_demos > 0 else ())
    ):
        rng = random.Random(f"toolcalc:{cfg.seed}:{split}")
        problems: list[Problem] = []
        attempts = 0
        while len(problems) < count:
            attempts += 1
            if attempts > 50 * count + 1000:
                raise RuntimeError(f"could not draw {count} distinct {split} problems; widen the families")
            fam = rng.choices(names, weights)[0]
            p = make_problem(fam, rng, templates=_templates_for(split, fam, cfg.heldout_templates))
            key = problem_key(p)
            if key in seen:
                continue
            seen.add(key)
            problems.append(p)
        out[split] = problems
    return out


def build_rl_row(p: Problem, *, split: str, index: int, agent_name: str = "tool_agent") -> dict[str, Any]:
    """One problem in the project's RL row schema (verl parquet), see ``cleaner.data.schema``."""
    return {
        "data_source": p.data_source,
        "prompt": [{"role": "user", "content": f"{p.question}\n{INSTRUCTION}"}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": str(p.answer)},
        "extra_info": {
            "index": f"{split}-{index}",
            "source": "toolcalc",
            "split": split,
            "family": p.family,
            "template": p.template,
            "params": json.dumps(p.params, sort_keys=True),
        },
        "agent_name": agent_name,
    }


# -------------------------------------------------------------------------------------------- SFT traces
@dataclass
class _TracePlan:
    problem: Problem
    kind: str  # clean | shallow | deep
    steps: list[list[Attempt]]  # per step: the attempts in order (failing ones first, the last must succeed)
    demo: bool = False  # a recovery demonstration: failed attempts are context only (not trained)


def _plan(p: Problem, rng: random.Random, cfg: TestbedDataConfig) -> _TracePlan:
    sol = FAMILIES[p.family].solution(p.params, rng)
    steps = [[a] for a in sol.clean]
    r = rng.random()
    kind = "clean"
    if r < cfg.slip_rate and sol.slips:
        broken, fix = sol.slips[rng.randrange(len(sol.slips))]
        steps[0] = [broken, fix]
        kind = "shallow"
    elif cfg.slip_rate <= r < cfg.slip_rate + cfg.wrong_rate and sol.wrong:
        broken, fix = sol.wrong[rng.randrange(len(sol.wrong))]
        steps[0] = [broken, fix]
        kind = "deep"
    return _TracePlan(p, kind, steps)


def _recovery_plan(p: Problem, rng: random.Random) -> _TracePlan:
    """A recovery demonstration: the family's failing first attempt (a slip, else a wrong approach), then its fix."""
    sol = FAMILIES[p.family].solution(p.params, rng)
    steps = [[a] for a in sol.clean]
    pairs = [("shallow", pair) for pair in sol.slips] + [("deep", pair) for pair in sol.wrong]
    kind, (broken, fix) = pairs[rng.randrange(len(pairs))]
    steps[0] = [broken, fix]
    return _TracePlan(p, kind, steps, demo=True)


async def _run_cached(box: Any, code: str, cache: dict[str, Any], cfg: TestbedDataConfig) -> Any:
    if code not in cache:
        cache[code] = asyncio.ensure_future(
            box.run(code, timeout_s=cfg.tool_timeout_s, memory_mb=cfg.tool_memory_mb)
        )
    return await cache[code]


def _assistant(content: str, code: str | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if code is not None:
        msg["tool_calls"] = [
            {"type": "function", "function": {"name": "code_interpreter", "arguments": {"code": code}}}
        ]
    return msg


async def _realise(plan: _TracePlan, box: Any, cache: dict, cfg: TestbedDataConfig) -> dict[str, Any]:
    """Execute the plan's programs for real and write the conversation the model will learn from."""
    p = plan.problem
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"{p.question}\n{INSTRUCTION}"}]
    outputs: list[str] = []
    failures = 0
    kind = plan.kind
    for step in plan.steps:
        for k, attempt in enumerate(step):
            code = attempt.code.format(**{f"x{i}": o for i, o in enumerate(outputs)}) if outputs else attempt.code
            res = await _run_cached(box, code, cache, cfg)
            messages.append(_assistant(attempt.reasoning, code))
            if plan.demo and not res.ok:
                messages[-1]["train"] = False
            text = format_exec_result(res, max_chars=cfg.max_tool_response_chars)
            messages.append({"role": "tool", "content": text, "status": "ok" if res.ok else res.status})
            if res.ok:
                outputs.append(res.stdout.strip())
                break
            failures += 1
            if k == len(step) - 1:
                raise RuntimeError(
                    f"toolcalc generator bug: the final program for {p.family} {p.params} failed:\n{code}\n{text}"
                )
        else:  # pragma: no cover - loop always breaks or raises
            pass
        if failures == 0 and len(step) > 1:
            # The first attempt worked on this input (e.g. a short power, small n): the trace is clean.
            kind = "clean"
    answer = outputs[-1]
    if answer != str(p.answer):
        raise RuntimeError(f"toolcalc generator bug: {p.family} {p.params} printed {answer}, expected {p.answer}")
    messages.append({"role": "assistant", "content": f"\\boxed{{{answer}}}"})
    return {
        "messages": messages,
        "kind": kind if failures else "clean",
        "family": p.family,
        "tool_failures": failures,
        "data_source": p.data_source,
        "ground_truth": str(p.answer),
        **({"recovery_demo": True} if plan.demo else {}),
    }


def make_sft_traces(
    problems: list[Problem],
    cfg: TestbedDataConfig,
    *,
    progress: Callable[[int], None] | None = None,
    sandbox_config: Any = None,
    recovery_problems: list[Problem] = (),
) -> list[dict[str, Any]]:
    """SFT trajectories for ``problems`` (executed for real in a sandbox pool; deterministic given cfg.seed), then
    recovery demonstrations for ``recovery_problems``; a demonstration whose first attempt happened to succeed on
    its input (no failure to recover from) is left out."""
    from cleaner.sandbox import Sandbox

    rng = random.Random(f"toolcalc-traces:{cfg.seed}")
    plans = [_plan(p, rng, cfg) for p in problems]
    demo_rng = random.Random(f"toolcalc-recovery:{cfg.seed}")
    plans += [_recovery_plan(p, demo_rng) for p in recovery_problems]

    async def run_all() -> list[dict[str, Any]]:
        cache: dict[str, Any] = {}
        async with Sandbox(workers=cfg.workers, config=sandbox_config) as box:
            sem = asyncio.Semaphore(4 * cfg.workers)

            async def one(plan: _TracePlan) -> dict[str, Any]:
                async with sem:
                    out = await _realise(plan, box, cache, cfg)
                if progress is not None:
                    progress(1)
                return out

            return await asyncio.gather(*(one(pl) for pl in plans))

    traces = asyncio.run(run_all())
    return [t for t in traces if not (t.get("recovery_demo") and t["tool_failures"] == 0)]


def trace_summary(traces: list[dict[str, Any]]) -> dict[str, Any]:
    kinds = Counter(t["kind"] for t in traces if not t.get("recovery_demo"))
    fams = Counter(t["family"] for t in traces)
    n = max(len(traces), 1)
    return {
        "n": len(traces),
        "kinds": dict(kinds),
        "families": dict(fams),
        **({"recovery_demos": n_demos} if (n_demos := sum(bool(t.get("recovery_demo")) for t in traces)) else {}),
        "tool_failures_per_trajectory": sum(t["tool_failures"] for t in traces) / n,
        "tool_calls_per_trajectory": sum(
            sum(1 for m in t["messages"] if m["role"] == "tool") for t in traces
        ) / n,
    }
