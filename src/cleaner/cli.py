"""The ``cleaner`` command. Every pipeline stage is a subcommand, so each Snakemake rule is also runnable by hand.

Each subcommand is registered by a small ``_add_<name>(subparsers)`` function that sets its handler with
``set_defaults(handler=...)`` (``func=`` is accepted too); a handler takes the parsed arguments and returns
the exit code. To add a subcommand, write ``_add_<name>`` + ``_cmd_<name>`` and list ``_add_<name>`` in
``_SUBCOMMANDS``.

Exit codes: 0 success, 2 bad usage or unusable input (argparse's convention).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cleaner import __version__
from cleaner.commands import add_commands
from cleaner.data.cli import add_commands as add_data_commands
from cleaner.engines.verl.cli import add_commands as add_verl_commands
from cleaner.fsutil import write_text_atomic
from cleaner.saar import REPLACEMENT_MODES, SIMILARITY_TARGETS, PurifyStats, SaarConfig, purify_messages, summarize_stats

EXIT_USAGE = 2


# --- purify ------------------------------------------------------------------------------------------------


def _add_purify(subparsers: argparse._SubParsersAction) -> None:
    defaults = SaarConfig()
    p = subparsers.add_parser(
        "purify",
        help="apply SAAR to logged trajectories (JSONL, one trajectory per line)",
        description=(
            "Purify logged tool-use trajectories with SAAR (CLEANER, arXiv 2601.15141). Each input line is a "
            "JSON list of OpenAI-format chat messages or an object with a 'messages' list; each output line "
            "is an object with the purified 'messages', the input object's other fields and 'purify_stats'. "
            "Malformed lines are reported as IN:LINENO: reason on stderr and skipped; blank lines are ignored."
        ),
    )
    p.add_argument("input", type=Path, metavar="IN", help="input JSONL")
    p.add_argument("output", type=Path, metavar="OUT", help="output JSONL (written atomically)")
    p.add_argument("--gamma", type=float, default=defaults.gamma, help="shallow if similarity >= gamma (paper 0.5)")
    p.add_argument("--max-retries", type=int, default=defaults.max_retries, help="K, retries per position (paper 3)")
    p.add_argument(
        "--rollback-probability",
        type=float,
        default=defaults.rollback_probability,
        help="per-trajectory gate p (paper: 1.0 Qwen3-4B, 0.7 Qwen2.5-7B)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the gate; trajectory on line L uses Random(f'{seed}:{L}')")
    p.add_argument("--similarity-on", choices=SIMILARITY_TARGETS, default=defaults.similarity_on)
    p.add_argument("--autojunk", action="store_true", help="difflib autojunk on (the reference's implicit setting)")
    p.add_argument("--replacement", choices=REPLACEMENT_MODES, default=defaults.replacement)
    p.add_argument("--max-tool-attempts", type=int, default=defaults.max_tool_attempts)
    p.set_defaults(handler=_cmd_purify)


def _purify_line(line: str, config: SaarConfig, rng: random.Random) -> tuple[dict[str, Any], PurifyStats]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if isinstance(record, list):
        extra: dict[str, Any] = {}
        messages = record
    elif isinstance(record, dict):
        if "messages" not in record:
            raise ValueError("object has no 'messages' field")
        extra = {k: v for k, v in record.items() if k not in ("messages", "purify_stats")}
        messages = record["messages"]
    else:
        raise ValueError(f"expected a list of messages or an object with 'messages', got {type(record).__name__}")
    purified, stats = purify_messages(messages, rng=rng, config=config)
    return {**extra, "messages": purified, "purify_stats": stats.to_dict()}, stats


def _cmd_purify(args: argparse.Namespace) -> int:
    try:
        config = SaarConfig(
            gamma=args.gamma,
            max_retries=args.max_retries,
            rollback_probability=args.rollback_probability,
            similarity_on=args.similarity_on,
            autojunk=args.autojunk,
            replacement=args.replacement,
            max_tool_attempts=args.max_tool_attempts,
        )
    except ValueError as exc:
        print(f"cleaner purify: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.input.is_file():
        print(f"cleaner purify: error: input file not found: {args.input}", file=sys.stderr)
        return EXIT_USAGE
    out_lines: list[str] = []
    all_stats: list[PurifyStats] = []
    bad = 0
    with args.input.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record, stats = _purify_line(line, config, random.Random(f"{args.seed}:{lineno}"))
            except ValueError as exc:
                print(f"{args.input}:{lineno}: {exc}", file=sys.stderr)
                bad += 1
                continue
            out_lines.append(json.dumps(record, ensure_ascii=False) + "\n")
            all_stats.append(stats)
    if bad:
        print(f"cleaner purify: skipped {bad} malformed line(s) of {bad + len(all_stats)}", file=sys.stderr)
    if bad and not all_stats:
        print(f"cleaner purify: error: no valid trajectory in {args.input}; {args.output} not written", file=sys.stderr)
        return EXIT_USAGE
    write_text_atomic(args.output, "".join(out_lines))
    summary = summarize_stats(all_stats)
    summary["malformed_lines"] = bad
    summary["config"] = config.to_dict()
    print(json.dumps(summary, sort_keys=True))
    return 0


# --- entry point ---------------------------------------------------------------------------------------------

# ``add_commands`` (cleaner.commands) registers the pipeline stages: testbed, sft, eval, ...
# ``cleaner.data.cli`` registers ``data ...`` (real datasets, eval sets, lm-eval); ``cleaner.engines.verl.cli``
# registers ``verl ...`` (paper-scale overrides, training, checkpoint conversion).
_SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_purify,
    add_commands,
    add_data_commands,
    add_verl_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cleaner",
        description="CLEANER reproduction: agentic RL on self-purified trajectories (arXiv 2601.15141).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cleaner`` command; returns the exit code (the console script exits with it)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None) or getattr(args, "func", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(handler(args))
    except (ValueError, FileNotFoundError, KeyError) as exc:
        # Bad input (config, data rows, paths) is reported in one line naming what is wrong; CLEANER_DEBUG=1
        # shows the traceback.
        if os.environ.get("CLEANER_DEBUG"):
            raise
        name = " ".join(str(a) for a in (args.command, getattr(args, "testbed_command", None)) if a)
        print(f"cleaner {name}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
