"""The differential fuzzer's long run: random small networks (tests/fuzz_graphs.py) checked against
the float64 layer-by-layer reference and autograd, as tests/test_fuzz_engine.py does for a few seeds
(every fifth network a sequence network [N, L, F]).

    python benchmarks/fuzz_engine.py --graphs 200 --start 1000

Prints one line per network that disagrees (above --tolerance) or raises, then a summary (how many
networks, comparisons, refusals, seconds). Exit status 1 when any disagreed or raised.
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clrp.errors import UnsupportedModel  # noqa: E402
from tests import fuzz_graphs  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--graphs", type=int, default=200)
    p.add_argument("--start", type=int, default=1000, help="first seed (the tests use 0..)")
    p.add_argument("--tolerance", type=float, default=1e-8)
    args = p.parse_args(argv)
    start, bad, refused, checks = time.perf_counter(), 0, collections.Counter(), 0
    for seed in range(args.start, args.start + args.graphs):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                errors = fuzz_graphs.check(seed, sequences=seed % 5 == 4)  # every 5th: [N, L, F]
        except UnsupportedModel as exc:
            refused[str(exc).split(": ", 1)[-1][:100]] += 1
            print(f"seed {seed}: refused: {exc}")
            continue
        except Exception as exc:  # a crash is a finding
            bad += 1
            print(f"seed {seed}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
            continue
        checks += len(errors)
        wrong = {k: v for k, v in errors.items() if not v <= args.tolerance}
        if wrong:
            bad += 1
            print(f"seed {seed}: " + ", ".join(f"{k} {v:.2e}" for k, v in wrong.items()))
        sys.stdout.flush()
    took = time.perf_counter() - start
    print(f"\n{args.graphs} networks (seeds {args.start}..{args.start + args.graphs - 1}), {checks} comparisons, "
          f"{bad} disagreeing or raising, {sum(refused.values())} refused, {took:.0f} s")
    for reason, n in refused.most_common():
        print(f"  refused {n}x: {reason}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
