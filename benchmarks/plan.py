"""How long the offline plan takes: what CI pays per stack on a pull request.

    .venv/bin/python benchmarks/plan.py                 # every stack, 3 repeats
    .venv/bin/python benchmarks/plan.py --stacks vision-prod --repeats 5 --against HEAD

Prints medians (seconds) of:
- cold: `python -m components.plan --stack S --json` in a fresh process (imports included),
- warm: `plan(S)` again in one process (render under mocks + policies + cost),
- against: `plan(S, against=REF)` in one process (adds a render of REF in a child process),
and the resource count and monthly cost range of each stack.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from components.plan import plan  # noqa: E402


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> int:
    parser = argparse.ArgumentParser()
    stacks = sorted(p.name.split(".")[1] for p in (ROOT / "stacks").glob("Pulumi.*.yaml"))
    parser.add_argument("--stacks", nargs="*", default=stacks)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", default=None, help="git ref for the --against timing")
    args = parser.parse_args()

    cmd = [sys.executable, "-m", "components.plan", "--json", "--stacks-dir", "stacks"]
    header = f"{'stack':<12} {'resources':>9} {'cold s':>7} {'warm s':>7}"
    header += f" {'against s':>9}" if args.against else ""
    print(header + "  monthly USD (min-max)")
    for stack in args.stacks:
        cold = []
        for _ in range(args.repeats):
            seconds, out = timed(
                subprocess.run, [*cmd, "--stack", stack], cwd=ROOT, capture_output=True, text=True
            )
            if out.returncode not in (0, 1):
                print(f"{stack}: plan failed:\n{out.stderr}", file=sys.stderr)
                return 1
            cold.append(seconds)
        opts = {"as_json": True, "stacks_dir": ROOT / "stacks"}
        warm = [timed(plan, stack, **opts)[0]]  # the first run pays the imports
        for _ in range(args.repeats):
            seconds, (text, _code) = timed(plan, stack, **opts)
            warm.append(seconds)
        report = json.loads(text)
        line = (
            f"{stack:<12} {len(report['resources']):>9} {statistics.median(cold):>7.2f}"
            f" {statistics.median(warm[1:]):>7.2f}"
        )
        if args.against:
            against = [
                timed(plan, stack, against=args.against, **opts)[0] for _ in range(args.repeats)
            ]
            line += f" {statistics.median(against):>9.2f}"
        cost = report["cost"]
        print(f"{line}  {cost['min_monthly']:,.2f}-{cost['max_monthly']:,.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
