"""SAAR: Similarity-Aware Adaptive Rollback (CLEANER.md, "The method", steps 1-7).

Everything here is engine-free Python: the decision logic lives in ONE class, :class:`SaarController`,
which both the offline purifier (:func:`purify_messages`, for logged chat trajectories) and the online agent
loop (token ids during rollout) drive, so the two cannot drift apart.

Paper / reference defaults and where we differ
------------------------------------------------
``SaarConfig()`` is the paper setting for Qwen3-4B: ``gamma=0.5``, ``max_retries`` (K) ``=3``,
``rollback_probability`` (p) ``=1.0``; Qwen2.5-7B uses ``rollback_probability=0.7``. The reference code
(Open-CLEANER) compares the whole JSON-escaped call text with difflib's autojunk on; we default to comparing
the CODE only with autojunk off (``similarity_on="code"``, ``autojunk=False``), which measures what the
paper describes (how much of the program changed). ``SaarConfig(similarity_on="call", autojunk=True)``
reproduces the reference ratios. ``replacement="shallow" | "deep"`` are ablations that force one kind.

Online call sequence (the agent loop; ``position`` = index of the assistant turn in the committed,
purified trajectory, i.e. how many assistant turns were committed before it)::

    ctl = SaarController(config, rng)               # draws the gate once (step 1)
    traj = TokenTrajectory(prompt_ids)              # ids + loss mask, kept aligned
    while not done:
        turn_ids = generate(traj.ids); turn = parse_assistant(decode(turn_ids))
        if not turn.attempted_call: traj.append(turn_ids, mask=1); break     # final answer
        result = execute(turn)                      # malformed call -> failed, format_malformed_call()
        checkpoint = traj.checkpoint()              # state right BEFORE the turn is committed
        decision = ctl.on_tool_result(position, failed=not result.ok)
        while decision.retry:                       # steps 3-4, at most K times per position
            ctx = checkpoint ids + turn_ids + tool-response ids of result      # temporary context
            new_ids = generate(ctx); new = parse_assistant(decode(new_ids))
            old_start = find_call_token_start(turn_ids, ...); new_start = find_call_token_start(new_ids, ...)
            rep = ctl.on_retry_turn(position, attempted_code(turn), attempted_code(new),
                                    boundaries_found=old_start is not None and new_start is not None)
            if rep is None: break                   # step 5 "no correction": SAAR is off from now on; the
                                                    # failed turn + error stay; new_ids was generated on
                                                    # exactly that context, so it may be committed as the
                                                    # next turn (this is what purify_messages does)
            turn_ids = splice_tokens(turn_ids, new_ids, old_start, new_start, rep.kind)
            turn = parse_assistant(decode(turn_ids))
            result = execute(turn)                  # the NEW call (the spliced turn's call)
            decision = ctl.on_tool_result(position, failed=not result.ok)
        traj.restore(checkpoint)
        traj.append(turn_ids, mask=1)
        traj.append(tool_response_ids(result, note=decision.note), mask=0)     # note: "attempted N times"
        position += 1
    stats = ctl.finish()                            # closes a chain cut short (e.g. length limit)

If generation stops in the middle of a chain (length or turn limit), call ``ctl.abandon(position)`` and keep
the latest executed failed attempt with its error. SAAR should be disabled for validation/evaluation rollouts
(``SaarConfig(enabled=False)``); the reference runs it there too, which we do not copy.

Token-level splice (step 4): :func:`find_call_token_start` locates the first token of ``<tool_call>`` in one
linear pass; shallow = ``old_ids[:old_start] + new_ids[new_start:]`` (old reasoning, new call), deep =
``new_ids``; no locatable boundary in either turn -> deep. Every spliced token is an original sample, so no
re-tokenisation happens; log-probs are recomputed by the trainer on the purified sequence (step 6).
"""

from __future__ import annotations

import copy
import difflib
import json
import random
from bisect import bisect_right
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from cleaner.protocol import (
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    MalformedCallError,
    ParsedTurn,
    decode_arguments,
    looks_like_error,
    render_tool_call,
)

ReplacementKind = Literal["shallow", "deep"]
ReplacementMode = Literal["adaptive", "shallow", "deep"]
SimilarityOn = Literal["code", "call"]

SIMILARITY_TARGETS: tuple[str, ...] = ("code", "call")
REPLACEMENT_MODES: tuple[str, ...] = ("adaptive", "shallow", "deep")


@dataclass(frozen=True)
class SaarConfig:
    """All SAAR settings in one place (CLEANER.md method section; defaults = paper, Qwen3-4B).

    Attributes:
        enabled: SAAR on at all (turn off for validation/eval rollouts and for the tools baseline).
        gamma: similarity threshold; ``similarity >= gamma`` -> shallow replacement (paper: 0.5).
        max_retries: K, retry budget per failing turn position (paper: 3).
        rollback_probability: p, per-trajectory gate (paper: 1.0 for Qwen3-4B, 0.7 for Qwen2.5-7B).
        similarity_on: ``"code"`` compares the code only (ours); ``"call"`` the whole rendered call text
            (the reference's behaviour).
        autojunk: difflib's autojunk heuristic (reference: on, implicitly; ours: off).
        replacement: ``"adaptive"`` (similarity vs gamma, the method); ``"shallow"`` / ``"deep"`` ablations.
        max_tool_attempts: safety cap; no retries once a trajectory executed this many tool calls
            (reference: 30).
        attempted_note: add "attempted N times ... consider a different approach" to the kept error when
            the budget runs out after N >= 2 attempts (reference behaviour).
    """

    enabled: bool = True
    gamma: float = 0.5
    max_retries: int = 3
    rollback_probability: float = 1.0
    similarity_on: str = "code"
    autojunk: bool = False
    replacement: str = "adaptive"
    max_tool_attempts: int = 30
    attempted_note: bool = True

    def __post_init__(self) -> None:
        for name in ("enabled", "autojunk", "attempted_note"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SaarConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("gamma", "rollback_probability"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"SaarConfig.{name} must be a number in [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        for name, minimum in (("max_retries", 0), ("max_tool_attempts", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"SaarConfig.{name} must be an integer >= {minimum}, got {value!r}")
        if self.similarity_on not in SIMILARITY_TARGETS:
            raise ValueError(f"SaarConfig.similarity_on must be one of {SIMILARITY_TARGETS}, got {self.similarity_on!r}")
        if self.replacement not in REPLACEMENT_MODES:
            raise ValueError(f"SaarConfig.replacement must be one of {REPLACEMENT_MODES}, got {self.replacement!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SaarConfig:
        """Build from a mapping (e.g. the ``saar:`` block of a YAML config); unknown keys are an error."""
        if not isinstance(data, Mapping):
            raise ValueError(f"SaarConfig.from_dict expects a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown SaarConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def similarity(old_code: str, new_code: str, *, on: str = "code", autojunk: bool = False) -> float:
    """difflib ``SequenceMatcher`` ratio between the failed call and the retry's call (step 4).

    ``on="code"`` compares the code strings; ``on="call"`` compares the canonical rendered call segments
    (``<tool_call>{"name": ..., "arguments": {"code": ...}}</tool_call>``, JSON-escaped like the reference).
    """
    if on == "call":
        old_code, new_code = render_tool_call(old_code), render_tool_call(new_code)
    elif on != "code":
        raise ValueError(f"similarity 'on' must be one of {SIMILARITY_TARGETS}, got {on!r}")
    return difflib.SequenceMatcher(None, old_code, new_code, autojunk=autojunk).ratio()


def choose_replacement(sim: float, gamma: float) -> ReplacementKind:
    """``"shallow"`` (execution repair) when ``sim >= gamma``, else ``"deep"`` (reasoning substitution)."""
    if not (0.0 <= sim <= 1.0) or not (0.0 <= gamma <= 1.0):
        raise ValueError(f"similarity and gamma must be in [0, 1], got {sim!r} and {gamma!r}")
    return "shallow" if sim >= gamma else "deep"


def decide_replacement(sim: float, config: SaarConfig, *, boundaries_found: bool = True) -> ReplacementKind:
    """The single replacement rule: no call boundary -> deep; ablation modes force a kind; else gamma test."""
    if not boundaries_found:
        return "deep"
    if config.replacement == "adaptive":
        return choose_replacement(sim, config.gamma)
    return "shallow" if config.replacement == "shallow" else "deep"


def attempted_note_text(attempts: int) -> str:
    """The reference's hint appended to an error kept after ``attempts`` failed tries at one position."""
    return (
        f"Note: this approach has been attempted {attempts} times and keeps failing; "
        "consider a different approach."
    )


@dataclass
class PurifyStats:
    """Per-trajectory SAAR counters (CLEANER.md step 7). Counts are per tool-calling assistant turn.

    triggered: positions where at least one retry was generated; recovered / failed: how those chains
    ended (recovered + failed == triggered after ``finish``); shallow / deep: replacements applied (one per
    retry turn that had a call); retries: retry turns generated; ``*_before``: tool calls / failures as
    generated (every attempt); ``*_after``: what stays in the purified trajectory; first_attempt_*: calls
    that were not retries (first-attempt success rate). stop_reason: why SAAR switched off mid-trajectory
    (``no_correction``, ``exhausted``, ``attempt_cap``, ``abandoned``) or None.
    """

    gate_open: bool = False
    stop_reason: str | None = None
    triggered: int = 0
    recovered: int = 0
    failed: int = 0
    shallow: int = 0
    deep: int = 0
    retries: int = 0
    tool_calls_before: int = 0
    tool_failures_before: int = 0
    tool_calls_after: int = 0
    tool_failures_after: int = 0
    first_attempt_calls: int = 0
    first_attempt_failures: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTERS = tuple(f.name for f in fields(PurifyStats) if f.type in ("int", int))


def summarize_stats(stats: Iterable[PurifyStats]) -> dict[str, Any]:
    """Aggregate per-trajectory stats: sums, gate count, stop reasons and the per-trajectory rates."""
    items = list(stats)
    total: dict[str, Any] = {name: sum(getattr(s, name) for s in items) for name in _COUNTERS}
    n = len(items)
    total["trajectories"] = n
    total["gate_open"] = sum(s.gate_open for s in items)
    total["stop_reasons"] = dict(Counter(s.stop_reason for s in items if s.stop_reason))
    fa = total["first_attempt_calls"]
    total["first_attempt_success_rate"] = (fa - total["first_attempt_failures"]) / fa if fa else None
    total["tool_failures_per_trajectory_before"] = total["tool_failures_before"] / n if n else None
    total["tool_failures_per_trajectory_after"] = total["tool_failures_after"] / n if n else None
    total["retries_per_trajectory"] = total["retries"] / n if n else None
    return total


@dataclass(frozen=True)
class Decision:
    """What the agent does after a tool result.

    retry: generate a retry turn (checkpoint context + failed turn + its error). Otherwise commit the turn
    and its tool response, appending ``note`` to the response when it is not None. reason: ``success``,
    ``recovered``, ``retry``, ``gate_closed``, ``saar_stopped``, ``exhausted``, ``attempt_cap``.
    """

    retry: bool
    note: str | None
    reason: str


@dataclass(frozen=True)
class Replacement:
    """Outcome of a retry turn that has a call: the replacement kind and the similarity that chose it."""

    kind: ReplacementKind
    similarity: float


@dataclass
class _Chain:
    position: Hashable
    awaiting: Literal["turn", "result"]


class SaarController:
    """Per-trajectory SAAR state machine, shared by :func:`purify_messages` and the online agent loop.

    State: the gate (drawn once at construction), per-position retry counters, the number of executed tool
    calls (safety cap), whether SAAR was switched off, the open retry chain, and the :class:`PurifyStats`.
    See the module docstring for the call sequence; calls out of order raise RuntimeError.
    """

    def __init__(self, config: SaarConfig | None = None, rng: random.Random | None = None) -> None:
        self.config = config if config is not None else SaarConfig()
        p = self.config.rollback_probability
        if rng is not None:
            draw = rng.random()  # exactly one draw per trajectory, whatever p is, so streams stay aligned
        elif 0.0 < p < 1.0 and self.config.enabled:
            raise ValueError(f"an explicit rng is required when rollback_probability is {p} (not 0 or 1)")
        else:
            draw = 0.0 if p >= 1.0 else 1.0
        self._gate_open = self.config.enabled and draw < p
        self._retries: dict[Hashable, int] = {}
        self._attempts = 0
        self._chain: _Chain | None = None
        self._stats = PurifyStats(gate_open=self._gate_open)

    @property
    def gate_open(self) -> bool:
        """Whether this trajectory was drawn into SAAR (step 1)."""
        return self._gate_open

    @property
    def active(self) -> bool:
        """Gate open and SAAR not switched off by no-correction / exhaustion / the attempt cap."""
        return self._gate_open and self._stats.stop_reason is None

    @property
    def stop_reason(self) -> str | None:
        return self._stats.stop_reason

    @property
    def tool_attempts(self) -> int:
        """Tool calls executed so far in this trajectory, retries included."""
        return self._attempts

    def retries_at(self, position: Hashable) -> int:
        return self._retries.get(position, 0)

    @property
    def stats(self) -> PurifyStats:
        """A copy of the counters so far."""
        return copy.copy(self._stats)

    def _retry_blocker(self, position: Hashable) -> str | None:
        if not self._gate_open:
            return "gate_closed"
        if self._stats.stop_reason is not None:
            return "saar_stopped"
        if self._retries.get(position, 0) >= self.config.max_retries:
            return "exhausted"
        if self._attempts >= self.config.max_tool_attempts:
            return "attempt_cap"
        return None

    def on_tool_result(self, position: Hashable, *, failed: bool) -> Decision:
        """Record one executed tool call at ``position`` and decide: retry, or commit (steps 2, 3, 5)."""
        chain = self._chain
        if chain is not None and (chain.position != position or chain.awaiting != "result"):
            raise RuntimeError(
                f"SAAR chain at position {chain.position!r} awaits a retry {chain.awaiting}; "
                f"got a tool result for position {position!r}"
            )
        is_retry = chain is not None
        st = self._stats
        self._attempts += 1
        st.tool_calls_before += 1
        st.tool_failures_before += int(failed)
        if not is_retry:
            st.first_attempt_calls += 1
            st.first_attempt_failures += int(failed)
        if not failed:
            st.tool_calls_after += 1
            if is_retry:
                st.recovered += 1
                self._chain = None
                return Decision(False, None, "recovered")
            return Decision(False, None, "success")
        blocker = self._retry_blocker(position)
        if blocker is None:
            n = self._retries.get(position, 0)
            if n == 0:
                st.triggered += 1
            self._retries[position] = n + 1
            st.retries += 1
            self._chain = _Chain(position, "turn")
            return Decision(True, None, "retry")
        st.tool_calls_after += 1
        st.tool_failures_after += 1
        note = None
        if blocker in ("exhausted", "attempt_cap"):
            st.stop_reason = blocker  # step 5: disable SAAR for the rest of the trajectory
            attempts = self._retries.get(position, 0) + 1
            if is_retry and self.config.attempted_note and attempts >= 2:
                note = attempted_note_text(attempts)
        if is_retry:
            st.failed += 1
            self._chain = None
        return Decision(False, note, blocker)

    def on_retry_turn(
        self,
        position: Hashable,
        old_code: str,
        new_code: str | None,
        *,
        boundaries_found: bool = True,
    ) -> Replacement | None:
        """Judge a retry turn (step 4). ``new_code=None``: the retry has no call -> no correction (step 5).

        ``old_code`` is the code of the latest failed attempt at this position (for a malformed call, the
        raw text between its tags). ``boundaries_found=False`` when either turn has no locatable call
        boundary (forces deep). Returns the replacement to apply, then execute the new call and report it
        with :meth:`on_tool_result`; None means: keep the failed attempt and its error, SAAR is now off.
        """
        chain = self._chain
        if chain is None or chain.position != position or chain.awaiting != "turn":
            raise RuntimeError(f"no SAAR retry was requested at position {position!r}")
        st = self._stats
        if new_code is None:
            st.failed += 1
            st.tool_calls_after += 1
            st.tool_failures_after += 1
            st.stop_reason = "no_correction"
            self._chain = None
            return None
        sim = similarity(old_code, new_code, on=self.config.similarity_on, autojunk=self.config.autojunk)
        kind = decide_replacement(sim, self.config, boundaries_found=boundaries_found)
        if kind == "shallow":
            st.shallow += 1
        else:
            st.deep += 1
        chain.awaiting = "result"
        return Replacement(kind, sim)

    def abandon(self, position: Hashable) -> None:
        """End an open chain without resolution (trajectory cut short): the latest failed attempt stays."""
        chain = self._chain
        if chain is None:
            return
        if chain.position != position:
            raise RuntimeError(f"open SAAR chain is at position {chain.position!r}, not {position!r}")
        st = self._stats
        st.failed += 1
        st.tool_calls_after += 1
        st.tool_failures_after += 1
        st.stop_reason = st.stop_reason or "abandoned"
        self._chain = None

    def finish(self) -> PurifyStats:
        """Close an open chain (as :meth:`abandon`) and return the final counters."""
        if self._chain is not None:
            self.abandon(self._chain.position)
        return self.stats


# ---------------------------------------------------------------------------------------------------------
# Token level (online)


def attempted_code(turn: ParsedTurn) -> str | None:
    """What a turn tried to run, for the similarity test: the code of a well-formed call; for a malformed
    call the raw text between its tags (after ``<tool_call>`` when unclosed); None when no call was tried.

    A retry whose call is malformed is therefore a correction attempt (it replaces the turn and then fails
    as a malformed call), not a "no correction" turn.
    """
    if turn.call is not None:
        return turn.call.code
    if turn.malformed is None:
        return None
    if turn.call_span is not None:
        start, end = turn.call_span
        return turn.text[start + len(TOOL_CALL_OPEN) : end - len(TOOL_CALL_CLOSE)]
    return turn.text[len(turn.reasoning) + len(TOOL_CALL_OPEN) :]


def find_call_token_start(
    token_ids: Sequence[int],
    *,
    tool_call_token_id: int | None = None,
    token_texts: Sequence[str] | None = None,
    marker: str = TOOL_CALL_OPEN,
) -> int | None:
    """Index of the first token of the call segment in an assistant turn, in linear time (step 4).

    * ``tool_call_token_id``: the tokenizer has ``<tool_call>`` as one special token (Qwen2.5/Qwen3):
      return the index of its first occurrence.
    * otherwise (or when that id does not occur, e.g. the model spelled the tag out in pieces)
      ``token_texts``, the decoded text of each token, is joined once, the marker is searched in the joined
      text, and the token whose character range contains the marker's first character is returned
      (cumulative offsets + bisection). When ``<tool_call>`` begins mid-token the boundary is ROUNDED DOWN:
      the whole straddling token belongs to the call segment, so a shallow splice drops the few reasoning
      characters that token carries before ``<`` and takes the new turn's straddling token as is. Tokens are
      never re-tokenised; every spliced token is an original sample.
    * None when no boundary can be located (caller falls back to a deep replacement).

    Per-token decoding of byte-level BPE turns a split multi-byte character into replacement characters,
    which shifts no ASCII marker; the joined text only serves to find the marker.
    """
    if tool_call_token_id is not None:
        for i, tok in enumerate(token_ids):
            if tok == tool_call_token_id:
                return i
    if token_texts is None:
        return None
    if len(token_texts) != len(token_ids):
        raise ValueError(f"token_texts has {len(token_texts)} entries for {len(token_ids)} token ids")
    starts: list[int] = []
    offset = 0
    for piece in token_texts:
        starts.append(offset)
        offset += len(piece)
    char = "".join(token_texts).find(marker)
    if char < 0:
        return None
    return bisect_right(starts, char) - 1 if starts else None


def call_token_start_for(tokenizer: Any, token_ids: Sequence[int], *, marker: str = TOOL_CALL_OPEN) -> int | None:
    """:func:`find_call_token_start` with the inputs taken from a Hugging Face tokenizer (duck-typed).

    Uses the special-token id when ``marker`` is a single token of the vocabulary; otherwise (or when the
    id does not occur) decodes each token once (``batch_decode`` of single-token lists: linear).
    """
    token_id = tokenizer.convert_tokens_to_ids(marker)
    if not isinstance(token_id, int) or tokenizer.convert_ids_to_tokens(token_id) != marker:
        token_id = None
    if token_id is not None and token_id in token_ids:
        return find_call_token_start(token_ids, tool_call_token_id=token_id)
    texts = tokenizer.batch_decode(
        [[t] for t in token_ids], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    return find_call_token_start(token_ids, token_texts=texts, marker=marker)


def splice_tokens(
    old_turn_ids: Sequence[int],
    new_turn_ids: Sequence[int],
    old_call_start: int | None,
    new_call_start: int | None,
    kind: ReplacementKind,
) -> list[int]:
    """Build the replacement turn: shallow = old reasoning tokens + new call tokens; deep = the new turn."""
    if kind == "deep":
        return list(new_turn_ids)
    if kind != "shallow":
        raise ValueError(f"kind must be 'shallow' or 'deep', got {kind!r}")
    if old_call_start is None or new_call_start is None:
        raise ValueError("a shallow splice needs both call boundaries; use deep when one is missing")
    if not 0 <= old_call_start <= len(old_turn_ids):
        raise ValueError(f"old_call_start {old_call_start} outside the old turn (length {len(old_turn_ids)})")
    if not 0 <= new_call_start <= len(new_turn_ids):
        raise ValueError(f"new_call_start {new_call_start} outside the new turn (length {len(new_turn_ids)})")
    return list(old_turn_ids[:old_call_start]) + list(new_turn_ids[new_call_start:])


def splice(
    old_turn_ids: Sequence[int],
    new_turn_ids: Sequence[int],
    old_call_start: int | None,
    new_call_start: int | None,
    sim: float,
    *,
    config: SaarConfig | None = None,
) -> tuple[list[int], ReplacementKind]:
    """Decide the replacement with :func:`decide_replacement` and splice the turn's token ids (step 4).

    Equivalent to ``SaarController.on_retry_turn`` + :func:`splice_tokens` without the counters.
    """
    cfg = config if config is not None else SaarConfig()
    kind = decide_replacement(sim, cfg, boundaries_found=old_call_start is not None and new_call_start is not None)
    return splice_tokens(old_turn_ids, new_turn_ids, old_call_start, new_call_start, kind), kind


@dataclass(frozen=True)
class Checkpoint:
    """Length of a :class:`TokenTrajectory` at a moment; restoring truncates back to it."""

    length: int


@dataclass
class TokenTrajectory:
    """Token ids and loss mask of one rollout, kept the same length (1 = model tokens, 0 = tool tokens).

    ``prompt_ids`` are not part of the response and carry no mask. Checkpoints are lengths, so restoring
    is a truncation and can never misalign ids and mask.
    """

    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    response_mask: list[int] = field(default_factory=list)

    @property
    def ids(self) -> list[int]:
        """The full context (prompt + response) to generate from."""
        return self.prompt_ids + self.response_ids

    def append(self, ids: Sequence[int], *, mask: int) -> None:
        if mask not in (0, 1):
            raise ValueError(f"mask must be 0 or 1, got {mask!r}")
        self.response_ids.extend(ids)
        self.response_mask.extend([mask] * len(ids))

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(len(self.response_ids))

    def restore(self, checkpoint: Checkpoint) -> None:
        if checkpoint.length > len(self.response_ids):
            raise ValueError(f"checkpoint at {checkpoint.length} is past the end ({len(self.response_ids)})")
        del self.response_ids[checkpoint.length :]
        del self.response_mask[checkpoint.length :]


# ---------------------------------------------------------------------------------------------------------
# Logged trajectories (offline)

_ROLES = ("system", "user", "assistant", "tool")


def message_text(content: Any) -> str:
    """Text of a chat message's ``content``: a string, None, or a list of ``{"type": "text", ...}`` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    raise ValueError(f"message content must be a string, a list of parts or null, got {type(content).__name__}")


def tool_message_failed(message: Mapping[str, Any]) -> bool:
    """A tool message is a failure when its ``status`` is present (not null) and not ``"ok"``; without a
    status field, when :func:`cleaner.protocol.looks_like_error` says its content shows an error."""
    status = message.get("status")
    if status is not None:
        return status != "ok"
    return looks_like_error(message_text(message.get("content")))


def _tool_calls(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list(message.get("tool_calls") or [])


def call_code(tool_call: Mapping[str, Any]) -> str:
    """The ``code`` argument of an OpenAI-format tool call (arguments as a dict or a JSON string).

    When the arguments are unusable (a malformed logged call), the raw arguments text is returned so the
    similarity still compares what the model wrote.
    """
    arguments = tool_call["function"].get("arguments")
    try:
        code = decode_arguments(arguments).get("code")
    except MalformedCallError:
        code = None
    if isinstance(code, str):
        return code
    return arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)


def assistant_code(message: Mapping[str, Any]) -> str | None:
    """Code of an assistant message's tool calls (joined by a blank line if several), None without calls."""
    calls = _tool_calls(message)
    if not calls:
        return None
    return "\n\n".join(call_code(c) for c in calls)


def count_tool_failures(messages: Sequence[Mapping[str, Any]]) -> int:
    """Number of tool-calling assistant turns whose tool messages include a failure."""
    n = 0
    for i, msg in enumerate(messages):
        if msg.get("role") == "assistant" and _tool_calls(msg):
            results = _tool_results(messages, i + 1)
            n += int(any(tool_message_failed(r) for r in results))
    return n


def _tool_results(messages: Sequence[Mapping[str, Any]], start: int) -> list[Mapping[str, Any]]:
    end = start
    while end < len(messages) and messages[end].get("role") == "tool":
        end += 1
    return list(messages[start:end])


def validate_messages(messages: Any) -> None:
    """Raise ValueError naming the first message that is not a valid OpenAI-format chat message."""
    if not isinstance(messages, list):
        raise ValueError(f"messages must be a list, got {type(messages).__name__}")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise ValueError(f"message {i} must be an object, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in _ROLES:
            raise ValueError(f"message {i} has role {role!r}; expected one of {_ROLES}")
        try:
            message_text(msg.get("content"))
        except ValueError as exc:
            raise ValueError(f"message {i}: {exc}") from None
        if "status" in msg and msg["status"] is not None and not isinstance(msg["status"], str):
            raise ValueError(f"message {i} has a non-string status {msg['status']!r}")
        calls = msg.get("tool_calls")
        if calls is None:
            continue
        if role != "assistant":
            raise ValueError(f"message {i} ({role}) has tool_calls; only assistant messages may")
        if not isinstance(calls, list):
            raise ValueError(f"message {i} tool_calls must be a list, got {type(calls).__name__}")
        for j, call in enumerate(calls):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or "arguments" not in function:
                raise ValueError(f"message {i} tool_calls[{j}] has no function.arguments")
            if not isinstance(function["arguments"], (dict, str)):
                raise ValueError(f"message {i} tool_calls[{j}] arguments must be an object or a JSON string")


def _replace_turn(failed: dict[str, Any], retry: dict[str, Any], kind: ReplacementKind) -> dict[str, Any]:
    if kind == "deep":
        return copy.deepcopy(retry)
    turn = copy.deepcopy(failed)  # shallow: the failed turn's reasoning (content) with the retry's call
    turn["tool_calls"] = copy.deepcopy(retry["tool_calls"])
    return turn


_DEFAULT = SaarConfig()


def purify_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    gamma: float = _DEFAULT.gamma,
    max_retries: int = _DEFAULT.max_retries,
    rollback_probability: float = _DEFAULT.rollback_probability,
    rng: random.Random | None = None,
    config: SaarConfig | None = None,
) -> tuple[list[dict[str, Any]], PurifyStats]:
    """Apply SAAR to a LOGGED trajectory in OpenAI chat format; returns new messages and the stats.

    The "retry" of a failed tool turn is the next assistant message of the log (the model saw its failed
    call and the error, as in SAAR's temporary context). With the controller's decisions:
      * retry with a call: shallow (failed turn's ``content``, retry's ``tool_calls``) or deep (retry turn
        whole); the failed call's tool messages disappear, the retry's follow the replaced turn. If that
        call fails too, the chain continues at the same position and collapses into one turn.
      * budget (K per position) or attempt cap exhausted: the last failed attempt (as replaced so far) and
        its error stay, and the rest of the log is kept as is. The "attempted N times" note is a rollout
        message and is NOT added to logged data (later logged turns never saw it).
      * retry without a call: the failure stays, the retry turn follows it, and SAAR stops.
      * no next assistant turn, or a retry whose call has no logged result: the chain is abandoned and the
        latest failed attempt stays.
    The gate draws exactly one number from ``rng`` when one is given. Pass either ``config`` or the
    keyword settings. The input is not modified.
    """
    if config is None:
        config = SaarConfig(gamma=gamma, max_retries=max_retries, rollback_probability=rollback_probability)
    elif (gamma, max_retries, rollback_probability) != (
        _DEFAULT.gamma,
        _DEFAULT.max_retries,
        _DEFAULT.rollback_probability,
    ):
        raise ValueError("pass SAAR settings either as config= or as keyword arguments, not both")
    if isinstance(messages, tuple):
        messages = list(messages)
    validate_messages(messages)
    msgs: list[dict[str, Any]] = list(messages)
    ctl = SaarController(config, rng)
    out: list[dict[str, Any]] = []
    n_assistant = 0
    i = 0
    while i < len(msgs):
        msg = msgs[i]
        if msg["role"] != "assistant" or not _tool_calls(msg):
            out.append(copy.deepcopy(msg))
            n_assistant += msg["role"] == "assistant"
            i += 1
            continue
        position = n_assistant
        turn = copy.deepcopy(msg)
        results = _tool_results(msgs, i + 1)
        i += 1 + len(results)
        if results:
            decision = ctl.on_tool_result(position, failed=any(tool_message_failed(r) for r in results))
            while decision.retry:
                if i >= len(msgs) or msgs[i]["role"] != "assistant":
                    ctl.abandon(position)
                    break
                retry = msgs[i]
                new_code = assistant_code(retry)
                retry_results = _tool_results(msgs, i + 1)
                if new_code is not None and not retry_results:
                    ctl.abandon(position)  # the retry's call was never executed in the log
                    break
                old_code = assistant_code(turn)
                assert old_code is not None
                replacement = ctl.on_retry_turn(position, old_code, new_code)
                if replacement is None:
                    break  # no correction: the retry turn is the next message, kept as logged
                turn = _replace_turn(turn, dict(retry), replacement.kind)
                results = retry_results
                i += 1 + len(retry_results)
                decision = ctl.on_tool_result(position, failed=any(tool_message_failed(r) for r in results))
        out.append(turn)
        out.extend(copy.deepcopy(dict(r)) for r in results)
        n_assistant += 1
    return out, ctl.finish()
