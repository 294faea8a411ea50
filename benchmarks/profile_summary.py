"""Where a server's time goes, from a py-spy ``--format raw`` profile (collapsed stacks).

``python -m benchmarks.profile_summary PROFILE [--deliveries N --cpu-seconds S]`` prints the
functions with the most samples on their own (self) and beneath them (inclusive), and, given
the run's deliveries and server CPU, the microseconds per delivery each one costs.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    """``func (path/to/module.py:12)`` as ``module.py:func``."""
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    marker = "site-packages/"
    if marker in path:
        path = path.split(marker, 1)[1]
    elif "/src/" in path:
        path = path.split("/src/", 1)[1]
    return f"{path}:{match.group('func')}"


def load(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [short(f) for f in stack.split(";") if f]
        # py-spy puts the thread first: "process 123:\"python ...\"" / "thread (0x...)"
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        stacks.append((frames, int(count)))
    return stacks


def summarize(stacks: list[tuple[list[str], int]], top: int) -> dict[str, list[tuple[str, int]]]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
    return {"self": own.most_common(top), "inclusive": inclusive.most_common(top)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--deliveries", type=int, default=0)
    parser.add_argument("--cpu-seconds", type=float, default=0.0)
    args = parser.parse_args()
    stacks = load(args.profile)
    total = sum(c for _, c in stacks)
    per_sample_us = 0.0
    if args.deliveries and args.cpu_seconds:
        per_sample_us = args.cpu_seconds * 1e6 / args.deliveries / max(total, 1)
    summary = summarize(stacks, args.top)
    for kind in ("self", "inclusive"):
        print(f"\n{kind} ({total} samples)")
        print("| function | samples | share |" + (" µs/delivery |" if per_sample_us else ""))
        print("|---|---|---|" + ("---|" if per_sample_us else ""))
        for name, count in summary[kind]:
            row = f"| `{name}` | {count} | {count / total * 100:.1f}% |"
            if per_sample_us:
                row += f" {count * per_sample_us:.2f} |"
            print(row)


if __name__ == "__main__":
    main()
