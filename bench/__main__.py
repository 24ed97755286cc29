"""`python -m bench [--quick] [--only NAME ...] [--stores sqlite,postgres]`.

Exit status: 0 when everything worked (slow figures included: timing goals are reported, never
enforced, since they depend on the machine), 1 when something is functionally broken (the bot
crashed, a notification was lost or duplicated, a command was not acknowledged), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

# `python -m bench` from the repository root already has it on sys.path; from elsewhere it may not.
_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from bench import (  # noqa: E402 - needs the sys.path entry above
    ack,
    burst,
    chart,
    latency,
    memory,
    metrics_overhead,
    modal,
    poll,
    reply_rate,
    reports,
    validate,
)
from bench.common import (  # noqa: E402
    STORES,
    FunctionalError,
    Result,
    git_head,
    log,
    machine_description,
    render_table,
)

BENCHMARKS: dict[str, Callable[[argparse.Namespace], Result]] = {
    "ack": lambda args: ack.run(args.quick),
    "reply": lambda args: reply_rate.run(args.quick),
    "poll": lambda args: poll.run(args.quick, args.stores),
    "burst": lambda args: burst.run(args.quick, args.stores),
    "latency": lambda args: latency.run(args.quick),
    "memory": lambda args: memory.run(args.quick),
    "chart": lambda args: chart.run(args.quick),
    "reports": lambda args: reports.run(args.quick),
    "validate": lambda args: validate.run(args.quick),
    "modal": lambda args: modal.run(args.quick),
    "metrics": lambda args: metrics_overhead.run(args.quick),
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark finetune-bot (a real `python -m bot` against the fakes of tests/) and "
        "print a Markdown table; JSON with the machine description goes to bench/results/. "
        "See BENCHMARKS.md.",
        epilog="Exit status: 0 all worked (timing goals are reported, never enforced), "
        "1 something is functionally broken, 2 bad usage.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny parameters, under a minute (CI smoke test)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--stores",
        default=",".join(STORES),
        help="comma-separated stores for the poll and burst benchmarks (default: sqlite,postgres)",
    )
    parser.add_argument(
        "--out", type=Path, default=Path(_REPO) / "bench" / "results", help="where to write the JSON results"
    )
    args = parser.parse_args(argv)
    stores = [s.strip() for s in args.stores.split(",") if s.strip()]
    unknown = sorted(set(stores) - set(STORES))
    if unknown or not stores:
        parser.error(f"--stores takes {', '.join(STORES)}; got {args.stores!r}")
    args.stores = stores
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    names = args.only or list(BENCHMARKS)
    mode = "quick" if args.quick else "full"
    machine = machine_description()
    log(
        f"{mode} run of {', '.join(names)} on {machine['cpu_count']} CPUs ({machine['cpu_model']}), "
        f"load average {machine['load_average_at_start']}"
    )
    started = time.perf_counter()
    results: list[Result] = []
    for name in names:
        load = list(os.getloadavg())
        began = time.perf_counter()
        log(f"--- {name} (load average {load[0]:.2f})")
        try:
            result = BENCHMARKS[name](args)
        except FunctionalError as error:
            result = Result(name, name)
            result.fail(str(error))
        except Exception as error:  # a crashed benchmark is a broken run: report it and go on
            result = Result(name, name)
            result.fail(f"{type(error).__name__}: {error}")
            traceback.print_exc()
        result.load_before = load
        result.seconds = time.perf_counter() - began
        log(f"--- {name} done in {result.seconds:.1f} s")
        results.append(result)
    total = time.perf_counter() - started

    print(render_table(results))
    for result in results:
        for note in result.notes:
            print(f"- {result.title}: {note}")
    failures = [f"{r.name}: {f}" for r in results for f in r.failures]
    print(f"\n{mode} run: {total:.0f} s, load average now {', '.join(f'{x:.2f}' for x in os.getloadavg())}")

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    path = args.out / f"{stamp}-{mode}.json"
    document = {
        "mode": mode,
        "benchmarks": names,
        "stores": args.stores,
        "machine": machine,
        "load_average_at_end": list(os.getloadavg()),
        # Others commit to this repository while benchmarks run: a different commit here means
        # the bot changed during the run.
        "git_commit_at_end": git_head(),
        "total_seconds": total,
        "results": [dataclasses.asdict(r) for r in results],
        "failures": failures,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"results written to {path}")
    if failures:
        print(f"{len(failures)} functional failure(s):", *failures, sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
