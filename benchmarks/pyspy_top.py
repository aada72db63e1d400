"""Top lines of a py-spy profile (``py-spy record --format raw``: folded stacks).

Prints where the busy samples went: by package/area (the innermost frame's file),
by function with its own samples ("self") and with everything it called ("total").

    .venv/bin/python benchmarks/pyspy_top.py PROFILE.txt [--top 25] [--focus TEXT]
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")


def area(file: str) -> str:
    """A short name for where a frame's code lives."""
    if "/site-packages/" in file:
        return file.split("/site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "companion_engine/" in file:
        rest = file.split("companion_engine/", 1)[1]
        return "companion_engine/" + rest.split("/", 1)[0].removesuffix(".py")
    if "/lib/python3" in file:
        rest = file.split("/lib/python3", 1)[1].split("/", 1)[1]
        return "stdlib:" + rest.split("/", 1)[0].removesuffix(".py")
    return file


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--focus", default=None, help="only stacks containing this text")
    args = ap.parse_args()
    self_fn: Counter[str] = Counter()
    total_fn: Counter[str] = Counter()
    self_area: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or (args.focus and args.focus not in stack):
            continue
        n = int(count)
        frames = stack.split(";")
        if frames and frames[0].startswith("thread ("):
            threads[frames[0]] += n
            frames = frames[1:]
        if not frames:
            continue
        total += n
        parsed = []
        for f in frames:
            m = FRAME.match(f)
            parsed.append((m["func"], m["file"]) if m else (f, "?"))
        func, file = parsed[-1]
        self_fn[f"{func} ({area(file)})"] += n
        self_area[area(file)] += n
        for name in {f"{fn} ({area(fl)})" for fn, fl in parsed}:
            total_fn[name] += n
    print(f"{total} samples" + (f" containing {args.focus!r}" if args.focus else ""))
    print("\nby thread:")
    for name, n in threads.most_common(8):
        print(f"  {n / total:6.1%}  {name}")
    print("\nby area (innermost frame):")
    for name, n in self_area.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")
    print("\nby function, self:")
    for name, n in self_fn.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")
    print("\nby function, total (with callees):")
    for name, n in total_fn.most_common(args.top):
        print(f"  {n / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
