"""Tests of cleaner.saar: config, similarity, every purify_messages branch, the online controller and the
token-level splice; plus an online-vs-offline equivalence check over scripted and random trajectories."""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from cleaner.protocol import parse_assistant, render_tool_call, render_tool_response
from cleaner.saar import (
    PurifyStats,
    SaarConfig,
    SaarController,
    TokenTrajectory,
    assistant_code,
    attempted_code,
    call_token_start_for,
    choose_replacement,
    count_tool_failures,
    decide_replacement,
    find_call_token_start,
    purify_messages,
    similarity,
    splice,
    splice_tokens,
    summarize_stats,
    tool_message_failed,
)

# Code pairs whose similarities the branch tests rely on (asserted in test_fixture_similarities).
BASE = "import math\nprint(math.sqrt(16))"
NEAR = "import math\nprint(math.sqrt(16.0))"  # execution repair of BASE
FAR = "total = 0\nfor k in range(1, 11):\n    total += k * k\nprint(total)"  # a different program
C0, C1, C2 = "print(a)", "a = 1\nprint(a)", "a = 1\nb = 2\nc = 3\nprint(a + b + c)"
TRACE = 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\nNameError: name \'a\' is not defined'


def test_fixture_similarities():
    assert similarity(BASE, NEAR) >= 0.5
    assert similarity(BASE, FAR) < 0.5
    # a chain is judged against the LATEST failed call: C2 is close to C1 but far from C0
    assert similarity(C0, C1) >= 0.5 and similarity(C1, C2) >= 0.5 and similarity(C0, C2) < 0.5


# --- message builders ------------------------------------------------------------------------------------------

_ids = iter(range(10**6))


def prompt() -> list[dict]:
    return [{"role": "system", "content": "You can run Python."}, {"role": "user", "content": "Compute it."}]


def asst(content: str, code: str | None = None, *, string_args: bool = False) -> dict:
    msg: dict = {"role": "assistant", "content": content}
    if code is not None:
        args = {"code": code}
        msg["tool_calls"] = [
            {
                "id": f"call_{next(_ids)}",
                "type": "function",
                "function": {"name": "code_interpreter", "arguments": json.dumps(args) if string_args else args},
            }
        ]
    return msg


def ok(text: str = "4.0", *, status: str | None = "ok") -> dict:
    msg = {"role": "tool", "content": text}
    if status is not None:
        msg["status"] = status
    return msg


def fail(text: str = TRACE, *, status: str | None = "error") -> dict:
    msg = {"role": "tool", "content": text}
    if status is not None:
        msg["status"] = status
    return msg


def final(answer: str = "4") -> dict:
    return asst(f"So the answer is \\boxed{{{answer}}}.")


def check_invariants(inp: list[dict], out: list[dict], stats: PurifyStats) -> None:
    assert stats.tool_failures_before == count_tool_failures(inp)
    assert stats.tool_failures_after == count_tool_failures(out)
    assert stats.recovered + stats.failed == stats.triggered
    assert stats.shallow + stats.deep <= stats.retries
    assert stats.first_attempt_calls + stats.shallow + stats.deep == stats.tool_calls_before
    n_calls_out = sum(  # executed calls: a call without a logged result was never run
        1
        for i, m in enumerate(out)
        if m["role"] == "assistant" and m.get("tool_calls") and i + 1 < len(out) and out[i + 1]["role"] == "tool"
    )
    assert stats.tool_calls_after == n_calls_out


def purify(messages: list[dict], **kwargs):
    snapshot = copy.deepcopy(messages)
    out, stats = purify_messages(messages, **kwargs)
    assert messages == snapshot, "purify_messages must not modify its input"
    check_invariants(messages, out, stats)
    return out, stats


# --- SaarConfig -------------------------------------------------------------------------------------------------


def test_config_defaults_are_the_paper_setting():
    cfg = SaarConfig()
    assert (cfg.gamma, cfg.max_retries, cfg.rollback_probability) == (0.5, 3, 1.0)
    assert (cfg.similarity_on, cfg.autojunk, cfg.replacement, cfg.max_tool_attempts) == ("code", False, "adaptive", 30)
    assert cfg.enabled and cfg.attempted_note
    with pytest.raises(AttributeError):
        cfg.gamma = 0.7  # type: ignore[misc]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("gamma", 1.5),
        ("gamma", -0.1),
        ("gamma", "0.5"),
        ("gamma", True),
        ("rollback_probability", 2),
        ("max_retries", -1),
        ("max_retries", 2.0),
        ("max_tool_attempts", 0),
        ("similarity_on", "text"),
        ("replacement", "random"),
        ("enabled", 1),
        ("autojunk", "yes"),
        ("attempted_note", None),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"SaarConfig.{field}"):
        SaarConfig(**{field: value})


def test_config_from_dict_and_to_dict():
    cfg = SaarConfig.from_dict({"gamma": 1, "max_retries": 2, "rollback_probability": 0.7, "replacement": "deep"})
    assert cfg.gamma == 1.0 and isinstance(cfg.gamma, float)
    assert SaarConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown SaarConfig field.*max_tool_retries"):
        SaarConfig.from_dict({"max_tool_retries": 3})
    with pytest.raises(ValueError, match="mapping"):
        SaarConfig.from_dict([("gamma", 0.5)])  # type: ignore[arg-type]


# --- similarity and the replacement rule ------------------------------------------------------------------------


def test_similarity_basics():
    assert similarity(BASE, BASE) == 1.0
    assert similarity("", "") == 1.0
    assert 0.0 <= similarity(BASE, FAR) < similarity(BASE, NEAR) <= 1.0
    with pytest.raises(ValueError, match="'on'"):
        similarity("a", "b", on="turn")


def test_similarity_on_call_inflates_unrelated_programs():
    """The reference compares the wrapped call text: the shared wrapper lifts unrelated programs over gamma."""
    assert similarity(BASE, FAR, on="code") < 0.5 <= similarity(BASE, FAR, on="call")


def test_similarity_autojunk_changes_long_inputs():
    a = "x = [" + ", ".join(str(i % 7) for i in range(150)) + "]\nprint(sum(x))"
    b = "y = [" + ", ".join(str((i * 3) % 7) for i in range(150)) + "]\nprint(max(y))"
    assert similarity(a, b, autojunk=True) < 0.1 < 0.5 < similarity(a, b, autojunk=False)


def test_choose_replacement_threshold_is_inclusive():
    assert choose_replacement(0.5, 0.5) == "shallow"
    assert choose_replacement(0.4999, 0.5) == "deep"
    assert choose_replacement(0.0, 0.0) == "shallow"
    with pytest.raises(ValueError):
        choose_replacement(1.2, 0.5)


def test_decide_replacement_modes_and_boundary_fallback():
    assert decide_replacement(0.9, SaarConfig()) == "shallow"
    assert decide_replacement(0.1, SaarConfig()) == "deep"
    assert decide_replacement(0.1, SaarConfig(replacement="shallow")) == "shallow"
    assert decide_replacement(0.9, SaarConfig(replacement="deep")) == "deep"
    assert decide_replacement(0.9, SaarConfig(replacement="shallow"), boundaries_found=False) == "deep"


# --- purify_messages: branch by branch ---------------------------------------------------------------------------


def test_clean_trajectory_is_unchanged():
    msgs = prompt() + [asst("compute", BASE), ok(), final()]
    out, stats = purify(msgs)
    assert out == msgs
    assert (stats.triggered, stats.retries, stats.tool_calls_before, stats.tool_calls_after) == (0, 0, 1, 1)
    assert stats.gate_open and stats.stop_reason is None


def test_shallow_replacement_keeps_reasoning_takes_retry_call():
    a0 = asst("I take the square root.", BASE)
    a1 = asst("Oops, let me fix the call.", NEAR)
    t1 = ok("4.0")
    msgs = prompt() + [a0, fail(), a1, t1, final()]
    out, stats = purify(msgs)
    assert out == prompt() + [{**a0, "tool_calls": a1["tool_calls"]}, t1, final()]
    assert out[2]["content"] == "I take the square root."
    assert (stats.triggered, stats.recovered, stats.failed, stats.shallow, stats.deep, stats.retries) == (1, 1, 0, 1, 0, 1)
    assert (stats.tool_failures_before, stats.tool_failures_after) == (1, 0)
    assert (stats.first_attempt_calls, stats.first_attempt_failures) == (1, 1)


def test_deep_replacement_takes_the_retry_turn_whole():
    a0 = asst("I take the square root.", BASE)
    a1 = asst("Different plan: sum the squares.", FAR)
    msgs = prompt() + [a0, fail(), a1, ok("385"), final("385")]
    out, stats = purify(msgs)
    assert out == prompt() + [a1, ok("385"), final("385")]
    assert (stats.shallow, stats.deep, stats.recovered) == (0, 1, 1)


def test_failed_chain_collapses_and_compares_latest_failed_call():
    a0, a1, a2 = asst("plan A", C0), asst("plan B", C1), asst("plan C", C2)
    msgs = prompt() + [a0, fail(), a1, fail("NameError: name 'b' is not defined"), a2, ok("6"), final("6")]
    out, stats = purify(msgs)
    # both steps are shallow (C0->C1, C1->C2), so the reasoning of the ORIGINAL turn survives
    assert out == prompt() + [{**a0, "tool_calls": a2["tool_calls"]}, ok("6"), final("6")]
    assert (stats.triggered, stats.recovered, stats.retries, stats.shallow, stats.deep) == (1, 1, 2, 2, 0)
    assert (stats.tool_failures_before, stats.tool_failures_after, stats.tool_calls_before) == (2, 0, 3)


def test_chain_with_deep_then_shallow():
    a0, a1, a2 = asst("plan A", BASE), asst("plan B", C1), asst("plan C", C2)
    msgs = prompt() + [a0, fail(), a1, fail(), a2, ok("6"), final("6")]
    out, stats = purify(msgs)
    # BASE->C1 is deep (turn := a1), C1->C2 shallow (a1's reasoning + a2's call)
    assert out == prompt() + [{**a1, "tool_calls": a2["tool_calls"]}, ok("6"), final("6")]
    assert (stats.shallow, stats.deep) == (1, 1)


def test_budget_exhausted_keeps_last_attempt_and_stops_purification():
    turns = [asst(f"try {k}", BASE + "\n" * k) for k in range(4)]  # all similar -> shallow
    later_fail, later_fix = asst("next step", FAR), asst("next step fixed", FAR + "\n")
    msgs = prompt()
    for t in turns:
        msgs += [t, fail()]
    msgs += [later_fail, fail(), later_fix, ok("385"), final("385")]
    out, stats = purify(msgs, max_retries=3)
    kept = {**turns[0], "tool_calls": turns[3]["tool_calls"]}  # composed last failed attempt
    assert out == prompt() + [kept, fail(), later_fail, fail(), later_fix, ok("385"), final("385")]
    assert stats.stop_reason == "exhausted"
    assert (stats.triggered, stats.recovered, stats.failed, stats.retries) == (1, 0, 1, 3)
    assert (stats.tool_failures_before, stats.tool_failures_after) == (5, 2)


def test_budget_of_one_retry():
    a0, a1, a2 = asst("a", BASE), asst("b", NEAR), asst("c", NEAR + " ")
    msgs = prompt() + [a0, fail(), a1, fail(), a2, ok(), final()]
    out, stats = purify(msgs, max_retries=1)
    assert out == prompt() + [{**a0, "tool_calls": a1["tool_calls"]}, fail(), a2, ok(), final()]
    assert (stats.retries, stats.failed, stats.stop_reason) == (1, 1, "exhausted")


def test_each_position_has_its_own_budget():
    p0 = [asst("p0 a", BASE), fail(), asst("p0 b", NEAR), fail(), asst("p0 c", NEAR + "\n"), ok()]
    p1 = [asst("p1 a", C0), fail(), asst("p1 b", C1), fail(), asst("p1 c", C2), ok("6")]
    msgs = prompt() + p0 + p1 + [final("6")]
    out, stats = purify(msgs, max_retries=2)
    assert out == prompt() + [
        {**p0[0], "tool_calls": p0[4]["tool_calls"]},
        ok(),
        {**p1[0], "tool_calls": p1[4]["tool_calls"]},
        ok("6"),
        final("6"),
    ]
    assert (stats.triggered, stats.recovered, stats.retries, stats.stop_reason) == (2, 2, 4, None)


def test_retry_without_call_keeps_failure_and_stops():
    a0 = asst("compute", BASE)
    answer = asst("I will answer directly: \\boxed{4}")
    msgs = prompt() + [a0, fail(), answer]
    out, stats = purify(msgs)
    assert out == msgs
    assert (stats.triggered, stats.failed, stats.recovered, stats.stop_reason) == (1, 1, 0, "no_correction")
    # later failures are no longer purified
    msgs2 = prompt() + [a0, fail(), asst("thinking without code"), asst("x", BASE), fail(), asst("y", NEAR), ok(), final()]
    out2, stats2 = purify(msgs2)
    assert out2 == msgs2
    assert stats2.triggered == 1 and stats2.stop_reason == "no_correction"


def test_gate_closed_keeps_everything():
    msgs = prompt() + [asst("a", BASE), fail(), asst("b", NEAR), ok(), final()]
    out, stats = purify(msgs, rollback_probability=0.0)
    assert out == msgs
    assert not stats.gate_open and stats.triggered == 0
    assert stats.tool_failures_after == stats.tool_failures_before == 1
    out, stats = purify(msgs, config=SaarConfig(enabled=False))
    assert out == msgs and not stats.gate_open


def test_gate_draws_exactly_once_per_trajectory():
    msgs = prompt() + [asst("a", BASE), fail(), asst("b", NEAR), ok(), final()]
    opened = 0
    for seed in range(40):
        rng, twin = random.Random(seed), random.Random(seed)
        out, stats = purify(msgs, rollback_probability=0.5, rng=rng)
        draw = twin.random()
        assert stats.gate_open == (draw < 0.5)
        assert rng.random() == twin.random()  # the purifier consumed exactly one number
        assert (len(out) == len(msgs) - 2) == stats.gate_open
        opened += stats.gate_open
    assert 10 < opened < 30
    # p = 1 still draws once when an rng is given, so streams do not depend on p
    rng, twin = random.Random(7), random.Random(7)
    purify(msgs, rng=rng)
    twin.random()
    assert rng.random() == twin.random()


def test_gate_needs_rng_for_fractional_probability():
    with pytest.raises(ValueError, match="explicit rng"):
        purify_messages(prompt(), rollback_probability=0.7)


def test_status_field_takes_precedence_over_content():
    assert not tool_message_failed({"role": "tool", "content": TRACE, "status": "ok"})
    assert tool_message_failed({"role": "tool", "content": "4.0", "status": "timeout"})
    assert tool_message_failed({"role": "tool", "content": TRACE})
    assert not tool_message_failed({"role": "tool", "content": "4.0"})
    assert not tool_message_failed({"role": "tool", "content": "4.0", "status": None})
    assert tool_message_failed({"role": "tool", "content": [{"type": "text", "text": "ValueError: x"}]})
    # a traceback printed by a successful run (status ok) is not purified away
    msgs = prompt() + [asst("a", BASE), ok(TRACE), asst("b", NEAR), ok(), final()]
    out, stats = purify(msgs)
    assert out == msgs and stats.triggered == 0
    # content-only failures (no status) are detected by the text rule
    msgs = prompt() + [asst("a", BASE), fail(status=None), asst("b", NEAR), ok(status=None), final()]
    out, stats = purify(msgs)
    assert len(out) == len(msgs) - 2 and stats.recovered == 1


def test_arguments_as_json_string():
    a0 = asst("a", BASE, string_args=True)
    a1 = asst("b", NEAR, string_args=True)
    assert assistant_code(a1) == NEAR
    out, stats = purify(prompt() + [a0, fail(), a1, ok(), final()])
    assert out[2]["content"] == "a" and out[2]["tool_calls"] == a1["tool_calls"] and stats.shallow == 1


def test_malformed_logged_arguments_compare_raw_text():
    bad = {"role": "assistant", "content": "a", "tool_calls": [{"function": {"name": "code_interpreter", "arguments": "{not json"}}]}
    assert assistant_code(bad) == "{not json"
    out, stats = purify(prompt() + [bad, fail("Error: tool call is not valid JSON", status=None), asst("b", BASE), ok(), final()])
    assert stats.recovered == 1 and stats.deep == 1


@pytest.mark.parametrize(("mode", "pair", "kind"), [("shallow", (BASE, FAR), "shallow"), ("deep", (BASE, NEAR), "deep")])
def test_replacement_ablation_modes(mode, pair, kind):
    a0, a1 = asst("a", pair[0]), asst("b", pair[1])
    out, stats = purify(prompt() + [a0, fail(), a1, ok(), final()], config=SaarConfig(replacement=mode))
    assert getattr(stats, kind) == 1
    assert out[2] == ({**a0, "tool_calls": a1["tool_calls"]} if kind == "shallow" else a1)


def test_similarity_on_call_config_changes_decision():
    a0, a1 = asst("a", BASE), asst("b", FAR)
    msgs = prompt() + [a0, fail(), a1, ok(), final()]
    _, code_stats = purify(msgs)
    _, call_stats = purify(msgs, config=SaarConfig(similarity_on="call", autojunk=True))
    assert (code_stats.deep, call_stats.shallow) == (1, 1)


def test_attempt_cap_stops_retries():
    msgs = prompt() + [asst("a", BASE), fail(), asst("b", NEAR), fail(), asst("c", NEAR + " "), ok(), final()]
    out, stats = purify(msgs, config=SaarConfig(max_tool_attempts=2))
    assert out == prompt() + [{**msgs[2], "tool_calls": msgs[4]["tool_calls"]}, fail(), msgs[6], ok(), final()]
    assert stats.stop_reason == "attempt_cap" and stats.failed == 1


def test_failure_at_end_of_log_is_kept():
    msgs = prompt() + [asst("a", BASE), fail()]
    out, stats = purify(msgs)
    assert out == msgs and stats.stop_reason == "abandoned" and (stats.triggered, stats.failed) == (1, 1)
    # a retry whose call has no logged result (log cut) is kept raw after the failure
    msgs = prompt() + [asst("a", BASE), fail(), asst("b", NEAR)]
    out, stats = purify(msgs)
    assert out == msgs and stats.shallow == 0 and stats.failed == 1
    # a user turn after the failure is not a retry
    msgs = prompt() + [asst("a", BASE), fail(), {"role": "user", "content": "go on"}, asst("b", NEAR), ok(), final()]
    out, stats = purify(msgs)
    assert out == msgs


def test_multiple_tool_calls_in_one_turn():
    two = asst("two calls", BASE)
    two["tool_calls"].append({"id": "x", "type": "function", "function": {"name": "code_interpreter", "arguments": {"code": "print(1)"}}})
    retry = asst("retry", NEAR)
    msgs = prompt() + [two, ok(), fail(), retry, ok(), final()]
    out, stats = purify(msgs)
    assert out == prompt() + [{**two, "tool_calls": retry["tool_calls"]}, ok(), final()]
    assert stats.tool_failures_before == 1 and stats.tool_failures_after == 0


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ("not a list", "messages must be a list"),
        ([{"content": "x"}], "message 0 has role None"),
        ([{"role": "user", "content": "q"}, "hello"], "message 1 must be an object"),
        ([{"role": "user", "content": 5}], "message 0: message content"),
        ([{"role": "user", "content": "q", "tool_calls": []}], "only assistant"),
        ([{"role": "assistant", "content": "", "tool_calls": {"a": 1}}], "tool_calls must be a list"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}], r"tool_calls\[0\] has no function.arguments"),
        ([{"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": 3}}]}], "object or a JSON string"),
        ([{"role": "tool", "content": "", "status": 0}], "non-string status"),
    ],
)
def test_invalid_messages_raise_clear_errors(messages, match):
    with pytest.raises(ValueError, match=match):
        purify_messages(messages)


def test_config_and_keywords_are_exclusive():
    with pytest.raises(ValueError, match="either as config"):
        purify_messages(prompt(), gamma=0.3, config=SaarConfig())


def test_summarize_stats():
    msgs = prompt() + [asst("a", BASE), fail(), asst("b", NEAR), ok(), final()]
    s1 = purify(msgs)[1]
    s2 = purify(msgs, rollback_probability=0.0)[1]
    summary = summarize_stats([s1, s2])
    assert summary["trajectories"] == 2 and summary["gate_open"] == 1
    assert summary["tool_failures_before"] == 2 and summary["tool_failures_after"] == 1
    assert summary["tool_failures_per_trajectory_after"] == 0.5
    assert summary["first_attempt_success_rate"] == pytest.approx(1 / 3)  # s2's retry is a first attempt
    assert summarize_stats([])["trajectories"] == 0


def test_attempted_code_covers_malformed_calls():
    assert attempted_code(parse_assistant("r" + render_tool_call(BASE))) == BASE
    assert attempted_code(parse_assistant("r <tool_call>{bad json</tool_call> x")) == "{bad json"
    assert attempted_code(parse_assistant('r <tool_call>{"name": "x"')) == '{"name": "x"'
    assert attempted_code(parse_assistant("just an answer \\boxed{1}")) is None


# --- the controller directly ---------------------------------------------------------------------------------------


def test_controller_notes_and_order_checks():
    ctl = SaarController(SaarConfig(max_retries=3))
    assert ctl.gate_open and ctl.active
    with pytest.raises(RuntimeError, match="no SAAR retry"):
        ctl.on_retry_turn(0, BASE, NEAR)
    assert ctl.on_tool_result(0, failed=True).retry
    with pytest.raises(RuntimeError, match="awaits a retry turn"):
        ctl.on_tool_result(0, failed=False)
    with pytest.raises(RuntimeError, match="awaits a retry turn"):
        ctl.on_tool_result(1, failed=True)
    for k in range(3):
        rep = ctl.on_retry_turn(0, BASE, NEAR)
        assert rep is not None and rep.kind == "shallow" and rep.similarity == similarity(BASE, NEAR)
        decision = ctl.on_tool_result(0, failed=True)
        assert decision.retry == (k < 2)
    assert decision.reason == "exhausted" and decision.note is not None and "attempted 4 times" in decision.note
    assert not ctl.active and ctl.stop_reason == "exhausted" and ctl.retries_at(0) == 3 and ctl.tool_attempts == 4
    # SAAR is off for the rest of the trajectory
    assert ctl.on_tool_result(1, failed=True) == ctl.on_tool_result(2, failed=True)
    assert ctl.on_tool_result(3, failed=True).reason == "saar_stopped"
    stats = ctl.finish()
    assert (stats.triggered, stats.failed, stats.retries, stats.tool_failures_after) == (1, 1, 3, 4)


def test_controller_note_threshold_and_switch():
    ctl = SaarController(SaarConfig(max_retries=1))
    ctl.on_tool_result(0, failed=True)
    ctl.on_retry_turn(0, BASE, FAR)
    decision = ctl.on_tool_result(0, failed=True)
    assert not decision.retry and "attempted 2 times" in decision.note
    ctl = SaarController(SaarConfig(max_retries=1, attempted_note=False))
    ctl.on_tool_result(0, failed=True)
    ctl.on_retry_turn(0, BASE, FAR)
    assert ctl.on_tool_result(0, failed=True).note is None
    ctl = SaarController(SaarConfig(max_retries=0))
    decision = ctl.on_tool_result(0, failed=True)
    assert not decision.retry and decision.note is None and ctl.stats.triggered == 0


def test_controller_boundary_fallback_and_abandon():
    ctl = SaarController()
    ctl.on_tool_result(0, failed=True)
    rep = ctl.on_retry_turn(0, BASE, NEAR, boundaries_found=False)
    assert rep.kind == "deep"
    with pytest.raises(RuntimeError, match="not 5"):
        ctl.abandon(5)
    ctl.abandon(0)
    stats = ctl.finish()
    assert stats.stop_reason == "abandoned" and stats.failed == 1 and stats.deep == 1


# --- token level ---------------------------------------------------------------------------------------------------


class ToyTokenizer:
    """Fixed-width chunk tokenizer with an optional single special token per tag (vocabulary per instance)."""

    TAGS = ("<tool_call>", "</tool_call>")

    def __init__(self, *, special: bool = True, chunk: int = 1) -> None:
        self.special = special
        self.chunk = chunk
        self.vocab: dict[str, int] = {}
        self.pieces: list[str] = []
        if special:
            for tag in self.TAGS:
                self._id(tag)

    def _id(self, piece: str) -> int:
        if piece not in self.vocab:
            self.vocab[piece] = len(self.pieces)
            self.pieces.append(piece)
        return self.vocab[piece]

    def encode(self, text: str) -> list[int]:
        ids, i = [], 0
        while i < len(text):
            tag = next((t for t in self.TAGS if self.special and text.startswith(t, i)), None)
            if tag:
                ids.append(self.vocab[tag])
                i += len(tag)
                continue
            end = i + self.chunk
            if self.special:
                nxt = [p for p in (text.find(t, i) for t in self.TAGS) if p >= 0]
                end = min([end, *nxt])
            ids.append(self._id(text[i:end]))
            i = end
        return ids

    def decode(self, ids) -> str:
        return "".join(self.pieces[i] for i in ids)

    def texts(self, ids) -> list[str]:
        return [self.pieces[i] for i in ids]

    @property
    def call_id(self) -> int | None:
        return self.vocab.get("<tool_call>") if self.special else None


def test_find_call_token_start_special_token():
    tok = ToyTokenizer()
    text = "reason" + render_tool_call("print(1)")
    ids = tok.encode(text)
    start = find_call_token_start(ids, tool_call_token_id=tok.call_id)
    assert tok.decode(ids[:start]) == "reason" and ids[start] == tok.call_id
    assert find_call_token_start(tok.encode("no call here"), tool_call_token_id=tok.call_id) is None


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 5, 7])
def test_find_call_token_start_text_path_rounds_down(chunk):
    tok = ToyTokenizer(special=False, chunk=chunk)
    reasoning = "Let me check with code: "
    text = reasoning + render_tool_call("print(1)")
    ids = tok.encode(text)
    start = find_call_token_start(ids, token_texts=tok.texts(ids))
    prefix = tok.decode(ids[:start])
    assert reasoning.startswith(prefix) and len(reasoning) - len(prefix) < chunk  # rounded down by < 1 token
    assert "<tool_call>" in tok.decode(ids[start : start + 1 + len("<tool_call>") // chunk + 1])
    assert "<" not in prefix
    assert find_call_token_start(ids, tool_call_token_id=999, token_texts=tok.texts(ids)) == start  # id fallback


def test_find_call_token_start_errors_and_none():
    assert find_call_token_start([1, 2, 3]) is None
    assert find_call_token_start([], token_texts=[]) is None
    with pytest.raises(ValueError, match="3 entries for 2 token ids"):
        find_call_token_start([1, 2], token_texts=["a", "b", "c"])


class CountingTexts(Sequence):
    """Token texts that count how many token texts the search reads (a slice counts its length)."""

    def __init__(self, texts):
        self.texts, self.reads = list(texts), 0

    def __len__(self):
        return len(self.texts)

    def __getitem__(self, i):
        out = self.texts[i]
        self.reads += len(out) if isinstance(i, slice) else 1
        return out

    def __iter__(self):
        for t in self.texts:
            self.reads += 1
            yield t


def test_find_call_token_start_is_linear():
    """Each token text is read a bounded number of times: a search that decodes every prefix (the reference's
    quadratic scan) reads n^2/2 texts. Counted, not timed, so a loaded machine cannot fail it."""
    n = 20_000
    texts = CountingTexts(["ab"] * n + ["<tool_", "call>"])
    ids = list(range(n + 2))
    assert find_call_token_start(ids, token_texts=texts) == n
    assert texts.reads <= 3 * (n + 2)
    assert find_call_token_start(ids + [-1], tool_call_token_id=-1) == n + 2


def test_splice_tokens_and_splice():
    old, new = [1, 2, 3, 90, 91], [4, 5, 90, 92]
    assert splice_tokens(old, new, 3, 2, "shallow") == [1, 2, 3, 90, 92]
    assert splice_tokens(old, new, 3, 2, "deep") == new
    assert splice_tokens(old, new, None, None, "deep") == new
    with pytest.raises(ValueError, match="both call boundaries"):
        splice_tokens(old, new, None, 2, "shallow")
    with pytest.raises(ValueError, match="outside the old turn"):
        splice_tokens(old, new, 9, 2, "shallow")
    with pytest.raises(ValueError, match="kind"):
        splice_tokens(old, new, 1, 1, "middle")  # type: ignore[arg-type]
    assert splice(old, new, 3, 2, 0.9) == ([1, 2, 3, 90, 92], "shallow")
    assert splice(old, new, 3, 2, 0.1) == (new, "deep")
    assert splice(old, new, None, 2, 0.9) == (new, "deep")  # no boundary -> deep (CLEANER.md step 4)
    assert splice(old, new, 3, 2, 0.1, config=SaarConfig(replacement="shallow"))[1] == "shallow"


def test_token_trajectory_checkpoint_restore_keeps_mask_aligned():
    traj = TokenTrajectory(prompt_ids=[7, 7])
    traj.append([1, 2], mask=1)
    traj.append([3], mask=0)
    cp = traj.checkpoint()
    traj.append([4, 5, 6], mask=1)
    traj.append([8], mask=0)
    traj.restore(cp)
    assert traj.response_ids == [1, 2, 3] and traj.response_mask == [1, 1, 0] and traj.ids == [7, 7, 1, 2, 3]
    traj.append([9], mask=1)
    assert len(traj.response_ids) == len(traj.response_mask) == 4
    with pytest.raises(ValueError, match="mask"):
        traj.append([1], mask=2)
    with pytest.raises(ValueError, match="past the end"):
        TokenTrajectory().restore(cp)


def _bpe_tokenizer(with_special: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["Let me compute the value with python code.", render_tool_call("print(2**10)"), "x = 1\nprint(x)"] * 20
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw)
    if with_special:
        tok.add_special_tokens({"additional_special_tokens": ["<tool_call>", "</tool_call>"]})
    return tok


@pytest.mark.parametrize("with_special", [True, False])
def test_call_token_start_with_a_real_hf_tokenizer(with_special):
    tok = _bpe_tokenizer(with_special)
    reasoning = "Let me compute the value with python code. "
    text = reasoning + render_tool_call("print(2**10)")
    ids = tok.encode(text, add_special_tokens=False)
    start = call_token_start_for(tok, ids)
    prefix, rest = tok.decode(ids[:start]), tok.decode(ids[start:])
    assert prefix + rest == text
    assert "<" not in prefix and rest.lstrip(" ").startswith("<tool_call>")
    if with_special:
        assert prefix == reasoning and ids[start] == tok.convert_tokens_to_ids("<tool_call>")
    assert call_token_start_for(tok, tok.encode(reasoning, add_special_tokens=False)) is None


# --- online vs offline: the same decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scripted:
    """One generated assistant turn: reasoning, code (None = no call) and whether running it succeeds."""

    reasoning: str
    code: str | None = None
    ok: bool = True

    @property
    def text(self) -> str:
        return self.reasoning + (render_tool_call(self.code) if self.code is not None else "")

    def result(self) -> str:
        return "4.0" if self.ok else TRACE


def run_online(script: list[Scripted], config: SaarConfig, rng: random.Random | None):
    """A minimal agent loop following the call sequence in cleaner.saar's module docstring.

    The scripted model returns the next scripted turn at every generation; executing a call yields the
    result scripted for the turn whose call it is (after a splice: the retry's call).
    """
    tok = ToyTokenizer()
    by_code = {}
    ctl = SaarController(config, rng)
    traj = TokenTrajectory(prompt_ids=tok.encode("Compute it."))
    segments: list[tuple[str, int, int]] = []
    pending = iter(script)
    position = 0

    def generate():
        turn = next(pending, None)
        if turn is not None and turn.code is not None:
            by_code[turn.code] = turn
        return None if turn is None else tok.encode(turn.text)

    def execute(parsed):
        res = by_code[parsed.call.code]
        return res.ok, tok.encode(render_tool_response(res.result()))

    def commit(ids, mask, role):
        start = len(traj.response_ids)
        traj.append(ids, mask=mask)
        segments.append((role, start, len(traj.response_ids)))

    turn_ids = generate()
    while turn_ids is not None:
        turn = parse_assistant(tok.decode(turn_ids))
        if not turn.attempted_call:
            commit(turn_ids, 1, "assistant")
            break
        ok, response_ids = execute(turn)
        checkpoint = traj.checkpoint()
        decision = ctl.on_tool_result(position, failed=not ok)
        next_ids = None
        while decision.retry:
            new_ids = generate()  # context: checkpoint + turn_ids + response_ids (unused by the script)
            if new_ids is None:
                ctl.abandon(position)
                break
            new = parse_assistant(tok.decode(new_ids))
            old_start = find_call_token_start(turn_ids, tool_call_token_id=tok.call_id)
            new_start = find_call_token_start(new_ids, tool_call_token_id=tok.call_id)
            rep = ctl.on_retry_turn(
                position,
                attempted_code(turn),
                attempted_code(new),
                boundaries_found=old_start is not None and new_start is not None,
            )
            if rep is None:
                next_ids = new_ids  # generated on exactly the committed context: it is the next turn
                break
            turn_ids = splice_tokens(turn_ids, new_ids, old_start, new_start, rep.kind)
            turn = parse_assistant(tok.decode(turn_ids))
            ok, response_ids = execute(turn)
            decision = ctl.on_tool_result(position, failed=not ok)
        traj.restore(checkpoint)
        commit(turn_ids, 1, "assistant")
        if decision.note:
            response_ids = tok.encode(render_tool_response(tok.decode(response_ids)[len("<tool_response>\n") : -len("\n</tool_response>")] + "\n" + decision.note))
        commit(response_ids, 0, "tool")
        position += 1
        turn_ids = next_ids if next_ids is not None else generate()
    stats = ctl.finish()
    texts = []
    for role, a, b in segments:
        assert set(traj.response_mask[a:b]) == {1 if role == "assistant" else 0}
        texts.append((role, tok.decode(traj.response_ids[a:b])))
    assert len(traj.response_ids) == len(traj.response_mask) == (segments[-1][2] if segments else 0)
    return texts, stats


def logged(script: list[Scripted]) -> list[dict]:
    msgs = [{"role": "user", "content": "Compute it."}]
    for turn in script:
        msgs.append(asst(turn.reasoning, turn.code))
        if turn.code is not None:
            msgs.append({"role": "tool", "content": turn.result(), "status": "ok" if turn.ok else "error"})
    return msgs


def as_texts(messages: list[dict]) -> list[tuple[str, str]]:
    out = []
    for m in messages[1:]:
        if m["role"] == "assistant":
            code = assistant_code(m)
            out.append(("assistant", m["content"] + (render_tool_call(code) if code is not None else "")))
        else:
            out.append(("tool", render_tool_response(m["content"])))
    return out


def assert_online_matches_offline(script: list[Scripted], config: SaarConfig, seed: int) -> PurifyStats:
    online_texts, online_stats = run_online(script, config, random.Random(seed))
    purified, offline_stats = purify_messages(logged(script), rng=random.Random(seed), config=config)
    assert online_texts == as_texts(purified)
    assert online_stats == offline_stats
    return offline_stats


SCENARIOS = {
    "clean": [Scripted("a ", BASE), Scripted("\\boxed{4}")],
    "shallow": [Scripted("a ", BASE, False), Scripted("b ", NEAR), Scripted("\\boxed{4}")],
    "deep": [Scripted("a ", BASE, False), Scripted("b ", FAR), Scripted("\\boxed{385}")],
    "chain": [Scripted("a ", C0, False), Scripted("b ", C1, False), Scripted("c ", C2), Scripted("\\boxed{6}")],
    "exhausted": [Scripted(f"t{k} ", BASE + " " * k, False) for k in range(4)] + [Scripted("n ", FAR), Scripted("\\boxed{1}")],
    "no_correction": [Scripted("a ", BASE, False), Scripted("\\boxed{4}")],
    "two_positions": [Scripted("a ", BASE, False), Scripted("b ", NEAR), Scripted("c ", C0, False), Scripted("d ", C1), Scripted("e")],
    "cut_mid_chain": [Scripted("a ", BASE, False), Scripted("b ", NEAR, False)],
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_online_controller_matches_purify_messages(name):
    cfg = SaarConfig(attempted_note=False)
    stats = assert_online_matches_offline(SCENARIOS[name], cfg, seed=0)
    expected_stop = {"exhausted": "exhausted", "no_correction": "no_correction", "cut_mid_chain": "abandoned"}
    assert stats.stop_reason == expected_stop.get(name)


def test_online_attempted_note_is_in_the_kept_tool_response():
    texts, stats = run_online(SCENARIOS["exhausted"], SaarConfig(), random.Random(0))
    assert stats.stop_reason == "exhausted"
    tool_texts = [t for role, t in texts if role == "tool"]
    assert "attempted 4 times" in tool_texts[0] and "NameError" in tool_texts[0]
    assert "attempted" not in tool_texts[1]


def test_online_matches_offline_on_random_trajectories():
    pool = [BASE, NEAR, NEAR + "\n", FAR, C0, C1, C2, "print(1)", "print(2)"]
    rnd = random.Random(1234)
    seen_stops = set()
    for trial in range(300):
        script = [
            Scripted(f"r{trial}.{k} ", rnd.choice(pool) + "\n" * k, rnd.random() < 0.5)
            for k in range(rnd.randint(0, 9))
        ]
        if rnd.random() < 0.7:
            script.append(Scripted("\\boxed{0}"))
        cfg = SaarConfig(
            gamma=rnd.choice([0.0, 0.5, 0.9]),
            max_retries=rnd.choice([0, 1, 2, 3]),
            rollback_probability=rnd.choice([0.0, 0.7, 1.0]),
            replacement=rnd.choice(["adaptive", "shallow", "deep"]),
            similarity_on=rnd.choice(["code", "call"]),
            max_tool_attempts=rnd.choice([2, 5, 30]),
            attempted_note=False,
        )
        stats = assert_online_matches_offline(script, cfg, seed=trial)
        seen_stops.add(stats.stop_reason)
    assert seen_stops >= {None, "exhausted", "no_correction", "attempt_cap", "abandoned"}
