"""Where a server's time went, from a py-spy ``--format raw`` recording, as text.

    .venv/bin/python benchmarks/profile_summary.py bench/run.pyspy.txt [--top 25]

Prints the share of samples per function, by own time (the function was
running) and by total time (it was on the stack), with the event loop's
idle wait taken out, so the lines add up to the server's busy time.
"""

from __future__ import annotations

import argparse
from collections import Counter

IDLE = ("select (selectors.py", "EpollSelector.select")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("recording")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()

    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    busy = 0
    with open(args.recording) as recording:
        for line in recording:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            if any(frames[-1].startswith(idle) for idle in IDLE):
                continue
            n = int(count)
            busy += n
            names = [frame.split(" (")[0] + " (" + frame.split(" (")[1].split(":")[0] + ")" if " (" in frame else frame
                     for frame in frames]
            own[names[-1]] += n
            for name in set(names):
                total[name] += n
    print(f"{busy} busy samples")
    print(f"\nown time (top {args.top}):")
    for name, n in own.most_common(args.top):
        print(f"  {100 * n / busy:5.1f} %  {name}")
    print(f"\ntotal time (top {args.top}, event-loop frames left out):")
    shown = 0
    for name, n in total.most_common():
        if name.startswith(("_run_module_as_main", "_run_code", "<module>", "main (", "run (", "Runner.run",
                            "BaseEventLoop.run", "BaseEventLoop._run_once", "Handle._run")):
            continue
        print(f"  {100 * n / busy:5.1f} %  {name}")
        shown += 1
        if shown == args.top:
            break


if __name__ == "__main__":
    main()
