"""Record LiveCodeBench's own verdicts for the code cases of tests/fixtures/grading_cases.yaml.

LiveCodeBench's grader is not a dependency of this project: point ``--lcb-repo`` at a checkout of
github.com/LiveCodeBench/LiveCodeBench outside this repository (nothing of it is copied here). Each case runs
through LCB's official per-problem path, ``lcb_runner.evaluation.compute_code_generation_metrics.
evaluate_generations_by_problem`` (``check_correctness`` -> ``testing_util.run_test`` in a forked process, with
LCB's ``sys.set_int_max_str_digits(50000)``), and the per-test results plus the error code are written to
tests/fixtures/grading_lcb_verdicts.json together with this command and the LCB commit.

    git clone https://github.com/LiveCodeBench/LiveCodeBench /tmp/lcb/repo
    PYTHONPATH=src python scripts/record_lcb_verdicts.py --lcb-repo /tmp/lcb/repo
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from grading_cases import LCB_VERDICTS_PATH, lcb_sample, load_cases  # noqa: E402


def lcb_verdict(evaluate, case: dict) -> dict:
    """LCB's result list and error code for one case (one generation of one problem)."""
    results, metadata = evaluate([[case["code"]], lcb_sample(case), False, int(case["timeout"])])
    meta = metadata[0]
    return {"results": results[0], "error_code": meta.get("error_code"), "error_message": meta.get("error_message")}


def lcb_commit(repo: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lcb-repo", required=True, type=Path, help="checkout of LiveCodeBench (outside this repo)")
    parser.add_argument("--lcb-commit", help="LCB commit to record (default: git rev-parse HEAD in --lcb-repo)")
    parser.add_argument("--out", type=Path, default=LCB_VERDICTS_PATH)
    args = parser.parse_args()
    sys.path.insert(0, str(args.lcb_repo.resolve()))
    from lcb_runner.evaluation.compute_code_generation_metrics import evaluate_generations_by_problem

    verdicts = {}
    for case in load_cases()["code"]:
        verdicts[case["id"]] = lcb_verdict(evaluate_generations_by_problem, case)
        print(case["id"], verdicts[case["id"]]["results"], flush=True)
    record = {
        "command": "PYTHONPATH=src python scripts/record_lcb_verdicts.py --lcb-repo <LiveCodeBench checkout>",
        "lcb_repository": "https://github.com/LiveCodeBench/LiveCodeBench",
        "lcb_commit": args.lcb_commit or lcb_commit(args.lcb_repo),
        "python": platform.python_version(),
        "verdicts": verdicts,
    }
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {len(verdicts)} verdicts to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
