"""CLEANER's agent loop inside verl 0.9.1: ``cleaner_tool_agent``, an ``AgentLoopBase`` over :mod:`cleaner.agent`.

verl instantiates one agent loop per trajectory (``AgentLoopWorker._run_agent_loop``) and awaits
``run(sampling_params, **dataset_fields)``. :class:`CleanerAgentLoop.run` rolls the trajectory out with THE agent
loop of this project, :func:`cleaner.agent.run_agent` (multi-turn tool use + SAAR, token-in/token-out), using

- a :class:`ServerManagerGenerator` that turns each of the agent's generate calls into
  ``server_manager.generate(request_id, prompt_ids=..., sampling_params=...)`` (verl's ``LLMServerClient``: SGLang
  or vLLM on GPUs; :class:`LocalHFServerManager` on CPU),
- the ``code_interpreter`` tool's sandbox pool (:class:`cleaner.engines.verl.tool.CodeInterpreterTool`, loaded by
  verl from ``multi_turn.tool_config_path``, one pool per worker process),

and returns an ``AgentLoopOutput`` with the purified prompt/response ids, ``response_mask`` (tool tokens 0), no
rollout log-probs for spliced trajectories (CLEANER.md step 6: the trainer recomputes old log-probs on the purified
sequence, so the recipe runs with ``rollout.calculate_log_probs=False``), ``num_turns`` as verl counts them
(user prompt + assistant turns + tool turns), the generation / tool time in ``metrics``, and every SAAR / tool
statistic of :func:`cleaner.agent.run_agent` in ``extra_fields`` under ``cleaner/<name>`` (verl puts extra fields
into the batch's non-tensor data; :class:`cleaner.engines.verl.reward.CleanerRewardManager` copies the numeric ones
into the reward's extra info, which verl logs for validation and dumps with ``trainer.rollout_data_dir``);
``tool_call_counts`` (calls kept in the purified trajectory) is logged by verl's trainer itself.

Settings. The agent / SAAR settings come from the trainer config's ``cleaner`` block, which
:mod:`cleaner.engines.verl.overrides` writes as ``+cleaner.*`` Hydra overrides (so they sit in the overrides file
next to everything else)::

    cleaner: {seed: 0, mode: train|eval, request_seed_key: null,
              agent: {max_turns: 16, ...cleaner.agent.AgentConfig fields},
              saar: {...SaarConfig fields},        # training rollouts: the arm's own SAAR
              val_saar: {...SaarConfig fields}}    # validation / evaluation requests: test-time SAAR (eval.saar)

Without that block the loop uses verl's rollout settings (turn limit, prompt/response length), the paper's SAAR
(K=3, gamma=0.5, p=1.0) for training and no SAAR for validation. Sampling temperature / top-p / top-k are verl's
per-request ``sampling_params`` (they switch to ``val_kwargs`` for validation).

Validation. verl does not tell an agent loop whether it is validating. With ``cleaner.mode: eval`` (the eval-only
run) every trajectory is an evaluation one; in training a request whose sampling parameters equal ``val_kwargs``
while differing from the training ones (the recipe: top-p 0.6 vs 1.0) is a validation request. Validation and
evaluation requests run with ``val_saar`` (the same settings for every arm, on or off as the overrides say: the
pipeline evaluates each model both ways, and the paper configs validate CLEANER with SAAR on, as the authors do);
training requests with ``saar``.

Seeds (explicit): trajectory seed = :func:`trajectory_seed` (``cleaner.seed``, the row's ``index`` =
``extra_info.index``, verl's per-sample ``priority``, i.e. the sample's position in the step's batch, which
distinguishes the n rollouts of one prompt). :func:`cleaner.agent.run_agent` derives one sampling seed per generate
call from it and the SAAR gate draw; the per-request seed reaches the engine under ``request_seed_key`` (``seed``
for vLLM; left out when null).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping, Sequence
from uuid import uuid4

from omegaconf import DictConfig, OmegaConf
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopMetrics, AgentLoopOutput, register
from verl.workers.rollout.replica import TokenOutput

from cleaner.agent import AgentConfig, Trajectory, run_agent
from cleaner.chat import ChatFormat
from cleaner.engines.base import GenerationOutput, SamplingParams
from cleaner.engines.verl import AGENT_NAME, STAT_PREFIX, TOOL_NAME
from cleaner.engines.verl.tool import CodeInterpreterTool
from cleaner.saar import SaarConfig

__all__ = [
    "AGENT_NAME",
    "STAT_PREFIX",
    "CleanerAgentLoop",
    "LocalHFServerManager",
    "LoopSettings",
    "ServerManagerGenerator",
    "trajectory_seed",
]

logger = logging.getLogger(__name__)

def trajectory_seed(base_seed: int, index: Any, sample: Any) -> int:
    """The seed of one trajectory: a hash of (run seed, prompt index, sample position), in [0, 2**63).

    A hash (not a sum) keeps seeds of neighbouring prompts / samples unrelated.
    """
    digest = hashlib.blake2b(f"{int(base_seed)}:{index}:{sample}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


@dataclass(frozen=True)
class LoopSettings:
    """The trainer config's ``cleaner`` block (see the module docstring)."""

    seed: int = 0
    mode: str = "train"
    request_seed_key: str | None = None
    agent: dict[str, Any] = field(default_factory=dict)
    saar: dict[str, Any] = field(default_factory=dict)
    val_saar: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_trainer_config(cls, config: DictConfig | Mapping[str, Any]) -> "LoopSettings":
        block = config.get("cleaner") if hasattr(config, "get") else None
        if block is None:
            return cls()
        data = OmegaConf.to_container(block, resolve=True) if isinstance(block, DictConfig) else dict(block)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"trainer config 'cleaner': unknown field(s) {unknown}; known: {sorted(known)}")
        settings = cls(**data)
        if settings.mode not in ("train", "eval"):
            raise ValueError(f"cleaner.mode must be 'train' or 'eval', got {settings.mode!r}")
        return settings


class ServerManagerGenerator:
    """A :class:`cleaner.engines.base.Generator` over verl's ``server_manager`` (``LLMServerClient``).

    Each call becomes ``server_manager.generate(request_id, prompt_ids=..., sampling_params={temperature, top_p,
    top_k, repetition_penalty, max_tokens, stop_token_ids, logprobs[, <seed_key>]})`` and its ``TokenOutput`` a
    ``GenerationOutput``: finish ``stop`` when the last token is one of the request's stop tokens (engines keep
    the stop token in the output, which the agent loop needs: it stops at ``</tool_call>``), else ``length``.
    One ``request_id`` per trajectory (verl's sticky session: the same server keeps the prefix cache, which makes
    SAAR's regenerations cheap). Time spent waiting and preemptions are summed for verl's metrics.
    """

    def __init__(
        self,
        server_manager: Any,
        *,
        request_id: str,
        top_k: int = -1,
        repetition_penalty: float = 1.0,
        seed_key: str | None = None,
    ):
        self.server_manager = server_manager
        self.request_id = request_id
        self.top_k = top_k
        self.repetition_penalty = repetition_penalty
        self.seed_key = seed_key
        self.seconds = 0.0
        self.num_preempted: int | None = None
        self.requests = 0

    def request_params(self, sampling: SamplingParams) -> dict[str, Any]:
        params: dict[str, Any] = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "max_tokens": sampling.max_new_tokens,
            "stop_token_ids": list(sampling.stop_token_ids),
            "logprobs": sampling.logprobs,
        }
        if self.seed_key is not None and sampling.seed is not None:
            params[self.seed_key] = sampling.seed
        return params

    async def generate(self, prompt_ids: Sequence[int], sampling: SamplingParams) -> GenerationOutput:
        start = time.perf_counter()
        out: TokenOutput = await self.server_manager.generate(
            request_id=self.request_id, prompt_ids=list(prompt_ids), sampling_params=self.request_params(sampling)
        )
        self.seconds += time.perf_counter() - start
        self.requests += 1
        if out.num_preempted is not None:
            self.num_preempted = (self.num_preempted or 0) + out.num_preempted
        ids = [int(t) for t in out.token_ids]
        if len(ids) > sampling.max_new_tokens:
            raise RuntimeError(
                f"server returned {len(ids)} tokens for max_tokens={sampling.max_new_tokens} (request {self.request_id})"
            )
        logprobs = None
        if sampling.logprobs:
            if out.log_probs is None or len(out.log_probs) != len(ids):
                raise RuntimeError(f"server returned no/misaligned log-probs for request {self.request_id}")
            logprobs = [float(x) for x in out.log_probs]
        finish = "stop" if ids and ids[-1] in sampling.stop_token_ids else "length"
        return GenerationOutput(ids, logprobs, finish, extra={"stop_reason": out.stop_reason})


class LocalHFServerManager:
    """A CPU stand-in for verl's ``LLMServerClient``: same ``generate`` signature, same ``TokenOutput``.

    Backed by :class:`cleaner.engines.hf.HFGenerator` (any transformers causal LM, e.g. the testbed's tiny model).
    Accepts the sampling-parameter keys verl's agent loops send (``temperature``, ``top_p``, ``top_k`` (-1 only),
    ``repetition_penalty`` (1.0 only), ``max_tokens`` / ``max_new_tokens``, ``stop_token_ids``, ``logprobs`` and the
    per-request seed under ``seed_key``); anything else is an error, so a mismatch with what the GPU engines get
    shows up on CPU. Like SGLang / vLLM (``ignore_eos`` off) it also stops at the model's EOS tokens
    (``generation_config.eos_token_id`` unless ``eos_token_ids`` is given): verl's stock ``tool_agent`` sends no stop
    tokens and relies on that. Without a token limit it allows ``default_max_tokens`` (verl's servers: the response
    length).
    """

    def __init__(
        self,
        generator: Any,
        *,
        default_max_tokens: int,
        seed_key: str = "seed",
        eos_token_ids: Sequence[int] | None = None,
    ):
        if default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")
        self.generator = generator
        self.default_max_tokens = default_max_tokens
        self.seed_key = seed_key
        if eos_token_ids is None:
            gen_cfg = getattr(getattr(generator, "model", None), "generation_config", None)
            eos = getattr(gen_cfg, "eos_token_id", None)
            eos_token_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        self.eos_token_ids = tuple(int(t) for t in eos_token_ids)
        self.requests: list[dict[str, Any]] = []

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Any = None,
        video_data: Any = None,
        audio_data: Any = None,
        mm_processor_kwargs: Any = None,
        **kwargs: Any,
    ) -> TokenOutput:
        if image_data or video_data or audio_data or kwargs.get("mm_processor_output"):
            raise ValueError("LocalHFServerManager serves text-only requests")
        sp = dict(sampling_params)
        top_k = sp.pop("top_k", -1)
        if top_k not in (-1, 0, None):
            raise ValueError(f"LocalHFServerManager supports top_k=-1 only, got {top_k}")
        if float(sp.pop("repetition_penalty", 1.0)) != 1.0:
            raise ValueError("LocalHFServerManager supports repetition_penalty=1.0 only")
        max_tokens = sp.pop("max_tokens", None)
        max_tokens = sp.pop("max_new_tokens", max_tokens)
        seed = sp.pop(self.seed_key, None)
        sampling = SamplingParams(
            temperature=float(sp.pop("temperature", 1.0)),
            top_p=float(sp.pop("top_p", 1.0)),
            max_new_tokens=int(max_tokens if max_tokens is not None else self.default_max_tokens),
            stop_token_ids=tuple(dict.fromkeys([*(int(t) for t in (sp.pop("stop_token_ids", None) or ())),
                                                *self.eos_token_ids])),
            seed=None if seed is None else int(seed),
            logprobs=bool(sp.pop("logprobs", False)),
        )
        if sp:
            raise ValueError(f"LocalHFServerManager: unsupported sampling parameter(s) {sorted(sp)}")
        self.requests.append({"request_id": request_id, "prompt_len": len(prompt_ids), **sampling_params})
        out = await self.generator.generate(list(prompt_ids), sampling)
        return TokenOutput(
            token_ids=list(out.token_ids), log_probs=out.logprobs, stop_reason="completed", num_preempted=0,
            extra_fields={"global_steps": None},
        )


class _TimedSandbox:
    """Wraps the sandbox pool to sum the wall time of tool calls (verl's ``tool_calls`` metric)."""

    def __init__(self, sandbox: Any):
        self.sandbox = sandbox
        self.seconds = 0.0

    async def run(self, code: str, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await self.sandbox.run(code, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def count_turns(response_mask: Sequence[int]) -> int:
    """verl's ``num_turns``: the user prompt + one per assistant segment (mask 1) + one per tool segment (mask 0)."""
    segments = sum(1 for i, m in enumerate(response_mask) if i == 0 or m != response_mask[i - 1])
    return 1 + segments


def trajectory_stats(traj: Trajectory) -> dict[str, Any]:
    """The trajectory's tool / SAAR statistics as verl extra fields (``cleaner/<name>``) + ``tool_call_counts``."""
    stats = {f"{STAT_PREFIX}{k}": v for k, v in traj.stats.items()}
    stats[f"{STAT_PREFIX}answered"] = traj.answer is not None
    stats["tool_call_counts"] = int(traj.stats.get("tool_calls_after", 0))
    return stats


@register(AGENT_NAME)
class CleanerAgentLoop(AgentLoopBase):
    """verl ``AgentLoopBase`` running :func:`cleaner.agent.run_agent` (see the module docstring).

    Construct it inside the running event loop (the base class binds it in ``__init__``); verl does, per trajectory.
    """

    def __init__(self, *args: Any, tools: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.settings = LoopSettings.from_trainer_config(self.config)
        rc = self.rollout_config
        tool_list = list(tools.tools) if tools is not None else []
        tool = next((t for t in tool_list if getattr(t, "name", None) == TOOL_NAME), None)
        self.tool: CodeInterpreterTool | None = tool if isinstance(tool, CodeInterpreterTool) else None
        self.agent_config = self._agent_config()
        if self.agent_config.tools_enabled and self.tool is None:
            raise ValueError(
                f"{AGENT_NAME} needs the '{TOOL_NAME}' tool of cleaner.engines.verl.tool (CodeInterpreterTool): set "
                "actor_rollout_ref.rollout.multi_turn.tool_config_path to a cleaner tool_config.yaml"
            )
        self.saar_config = self.agent_config.saar
        # Validation / evaluation: test-time SAAR; off without a val_saar block.
        self.val_saar_config = (SaarConfig.from_dict(self.settings.val_saar) if self.settings.val_saar
                                else SaarConfig(enabled=False))
        if rc.get("calculate_log_probs", False) and self.saar_config.enabled:
            raise ValueError(
                f"{AGENT_NAME}: SAAR splices tokens sampled under a discarded context, so rollout log-probs are stale; "
                "set actor_rollout_ref.rollout.calculate_log_probs=False (CLEANER.md step 6)"
            )
        if rc.get("calculate_log_probs", False) and self.val_saar_config.enabled:
            raise ValueError(
                f"{AGENT_NAME}: cleaner.val_saar.enabled with actor_rollout_ref.rollout.calculate_log_probs=True: verl "
                "asks for rollout log-probs in validation too and spliced trajectories have none; turn off SAAR at "
                "validation (eval.saar_at_validation: false) or rollout IS correction (rl.rollout_is_correction)"
            )
        self.chat_format = self.tool.chat_format(self.tokenizer) if self.tool is not None else ChatFormat(self.tokenizer)

    def _agent_config(self) -> AgentConfig:
        rc = self.rollout_config
        mt = rc.multi_turn
        defaults: dict[str, Any] = {
            "max_turns": int(mt.max_assistant_turns or AgentConfig.max_turns),
            "max_response_tokens": int(rc.response_length),
            "max_turn_tokens": int(rc.response_length),
            "max_prompt_tokens": int(rc.prompt_length),
        }
        if self.tool is not None:
            s = self.tool.settings
            defaults.update(tool_timeout_s=s.timeout_s, tool_memory_mb=s.memory_mb,
                            max_tool_response_chars=s.max_tool_response_chars)
        agent = {**defaults, **self.settings.agent}
        saar = SaarConfig.from_dict(self.settings.saar) if self.settings.saar else SaarConfig()
        cfg = AgentConfig.from_dict(agent, saar=saar)
        if cfg.max_response_tokens > rc.response_length or cfg.max_prompt_tokens > rc.prompt_length:
            raise ValueError(
                f"cleaner.agent max_response_tokens={cfg.max_response_tokens} / max_prompt_tokens="
                f"{cfg.max_prompt_tokens} exceed verl's rollout.response_length={rc.response_length} / "
                f"prompt_length={rc.prompt_length}"
            )
        return cfg

    def is_validation(self, sampling_params: Mapping[str, Any]) -> bool:
        """Whether a request belongs to a validation / evaluation rollout (see the module docstring)."""
        if self.settings.mode == "eval":
            return True
        rc, val = self.rollout_config, self.rollout_config.val_kwargs
        train = (float(rc.temperature), float(rc.top_p), int(rc.top_k))
        valid = (float(val.temperature), float(val.top_p), int(val.top_k))
        got = (float(sampling_params.get("temperature", rc.temperature)), float(sampling_params.get("top_p", rc.top_p)),
               int(sampling_params.get("top_k", rc.top_k)))
        return valid != train and got == valid

    def trajectory_config(self, sampling_params: Mapping[str, Any]) -> AgentConfig:
        """The agent config of one trajectory: verl's sampling parameters; ``val_saar`` for validation /
        evaluation requests, the arm's ``saar`` for training ones."""
        saar = self.val_saar_config if self.is_validation(sampling_params) else self.saar_config
        return replace(
            self.agent_config,
            temperature=float(sampling_params.get("temperature", self.agent_config.temperature)),
            top_p=float(sampling_params.get("top_p", self.agent_config.top_p)),
            logprobs=bool(sampling_params.get("logprobs", False)),
            saar=saar,
        )

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        messages = [dict(m) for m in kwargs["raw_prompt"]]
        if "priority" not in kwargs:
            raise ValueError(f"{AGENT_NAME} needs the per-sample 'priority' field verl's AgentLoopManager sets (seeding)")
        seed = trajectory_seed(self.settings.seed, kwargs.get("index", 0), kwargs["priority"])
        cfg = self.trajectory_config(sampling_params)
        gen = ServerManagerGenerator(
            self.server_manager,
            request_id=uuid4().hex,
            top_k=int(sampling_params.get("top_k", -1)),
            repetition_penalty=float(sampling_params.get("repetition_penalty", 1.0)),
            seed_key=self.settings.request_seed_key,
        )
        sandbox = _TimedSandbox(self.tool.sandbox if self.tool is not None else None)
        traj = await run_agent(gen, sandbox, self.chat_format, messages, cfg, seed=seed)
        return self.to_output(traj, gen, sandbox, seed=seed, validating=self.is_validation(sampling_params))

    def to_output(
        self, traj: Trajectory, gen: ServerManagerGenerator, sandbox: _TimedSandbox, *, seed: int, validating: bool
    ) -> AgentLoopOutput:
        limit = int(self.rollout_config.response_length)
        response_ids, response_mask = traj.response_ids[:limit], traj.response_mask[:limit]
        logprobs = traj.rollout_logprobs[:limit] if traj.rollout_logprobs is not None else None
        if self.rollout_config.get("calculate_log_probs", False) and logprobs is None:
            # verl stacks rollout log-probs batch-wide: one trajectory without them would break the batch.
            raise RuntimeError(f"{AGENT_NAME}: rollout log-probs requested but the trajectory has none")
        extra = trajectory_stats(traj)
        extra.update({f"{STAT_PREFIX}seed": seed, f"{STAT_PREFIX}validate": validating,
                      f"{STAT_PREFIX}truncated": len(traj.response_ids) > limit, "turn_scores": [], "tool_rewards": []})
        metrics = AgentLoopMetrics(
            generate_sequences=gen.seconds, tool_calls=sandbox.seconds,
            num_preempted=gen.num_preempted if gen.num_preempted is not None else -1,
        )
        return AgentLoopOutput(
            prompt_ids=list(traj.prompt_ids),
            response_ids=list(response_ids),
            response_mask=list(response_mask),
            response_logprobs=list(logprobs) if logprobs is not None else None,
            num_turns=count_turns(response_mask),
            metrics=metrics,
            extra_fields=extra,
        )
