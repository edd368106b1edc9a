"""How long rendering one stack under Pulumi's mock runtime takes (what each test pays).

    .venv/bin/python benchmarks/render.py                # every stack, 5 repeats
    .venv/bin/python benchmarks/render.py --stacks vision-prod --repeats 10

Prints, per stack, the number of resources and the median seconds of a warm in-process
`components.mockrun.render_stack` (imports already done), plus the first render of the
process (provider SDK imports included).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stacks", nargs="*", help="stack names (default: every stack file)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    stacks = args.stacks or sorted(
        p.name.removeprefix("Pulumi.").removesuffix(".yaml")
        for p in (ROOT / "stacks").glob("Pulumi.*.yaml")
    )

    start = time.perf_counter()
    from components.mockrun import render_stack  # noqa: E402 - timed with the first render

    render_stack(stacks[0], ROOT / "stacks")
    print(f"first render incl. imports ({stacks[0]}): {time.perf_counter() - start:.2f} s")
    print(f"{'stack':<14}{'resources':>10}{'median s':>10}{'min s':>8}")
    for stack in stacks:
        times, count = [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            count = len(render_stack(stack, ROOT / "stacks").resources)
            times.append(time.perf_counter() - t0)
        print(f"{stack:<14}{count:>10}{statistics.median(times):>10.3f}{min(times):>8.3f}")


if __name__ == "__main__":
    main()
