"""Command line: ``benchbench run | validate | plugins | compare``."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tabulate import tabulate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchbench", description="OOD detection and likelihood benchmark")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run a suite and write its leaderboard")
    r.add_argument("suite", help="path to a suite YAML file")
    r.add_argument("--profile", help="named profile of the suite (default: the suite's default_profile)")
    r.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default: auto)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a suite value, e.g. --set models.made.steps=100 (repeatable)")
    r.add_argument("--out", help="leaderboard folder (default: leaderboards/<suite name>)")
    r.add_argument("--cache-dir", help="cache folder (default: $BENCHBENCH_CACHE or ~/.cache/benchbench)")
    r.add_argument("--no-cache", action="store_true", help="recompute everything; read and write no persistent cache")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--strict", action="store_true", help="exit 1 if any part of the run failed")
    r.add_argument("--threads", type=int, help="CPU threads torch may use in this process (default: torch's choice)")

    v = sub.add_parser("validate", help="check a suite (every profile) without running it")
    v.add_argument("suite")
    v.add_argument("--profile", help="check only this profile")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")

    sub.add_parser("plugins", help="list every registered component and the package that supplied it")

    c = sub.add_parser("compare", help="compare two leaderboards (folders or results.csv files)")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--tol", type=float, default=1e-6, help="largest absolute difference accepted (default 1e-6)")
    return p


def cmd_run(args) -> int:
    from benchbench import distributed
    from benchbench.cache import Cache
    from benchbench.leaderboard import write_leaderboard
    from benchbench.runner import resolve_device, run_suite
    from benchbench.suite import load_suite

    t0 = time.perf_counter()
    suite = load_suite(args.suite, profile=args.profile, overrides=args.overrides)
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    layout = distributed.from_env()
    device = resolve_device(args.device, layout.local_rank)
    dist = distributed.init(device.type)
    if args.no_cache and dist.enabled:
        raise ValueError("--no-cache cannot be used in a distributed run: the ranks share results through the cache")
    cache = Cache(None if args.no_cache else (args.cache_dir or "default"))
    out = Path(args.out) if args.out else Path("leaderboards") / suite.name
    if dist.is_main:
        print(f"benchbench: suite {suite.name!r} profile {suite.profile!r} on {device}"
              f"{f' x {dist.world_size} processes' if dist.enabled else ''}; cache {cache.root}"
              f"{' (throw-away)' if cache.ephemeral else ''}", file=sys.stderr)
    from benchbench.leaderboard import code_state

    code = code_state()  # the code that runs: taken now, not when the leaderboard is written
    try:
        result = run_suite(suite, cache=cache, device=device, progress=not args.no_progress, out_dir=out, dist=dist)
        if not dist.is_main:  # rank 0 alone writes the leaderboard
            distributed.shutdown()
            return 0
        run = write_leaderboard(out, result, suite=suite, device=device, world_size=dist.world_size, code=code)
    finally:
        cache.close()
    distributed.shutdown()
    print((out / "README.md").read_text())
    for f in run["failures"]:
        print(f"benchbench: not computed: {f['where']}: {f['error'].splitlines()[0]}", file=sys.stderr)
    print(f"benchbench: {len(result.rows)} results in {time.perf_counter() - t0:.1f} s "
          f"(cache hits {run['cache']['hits']}, misses {run['cache']['misses']}); wrote {out}/", file=sys.stderr)
    return 1 if (args.strict and run["failures"]) else 0


def cmd_validate(args) -> int:
    from benchbench.suite import load_suite, validate_all_profiles

    if args.profile or args.overrides:
        suite = load_suite(args.suite, profile=args.profile, overrides=args.overrides)
        checked = [suite.profile]
    else:
        checked = validate_all_profiles(args.suite)
    names = ", ".join("(none)" if p is None else p for p in checked)
    print(f"{args.suite}: valid (profiles checked: {names})")
    return 0


def cmd_plugins(args) -> int:
    from benchbench.registry import get_registry

    print(tabulate(get_registry().rows(), headers="keys", tablefmt="github"))
    return 0


def cmd_compare(args) -> int:
    from benchbench.leaderboard import compare

    diffs, only_a, only_b = compare(args.a, args.b, tol=args.tol)
    if len(diffs):
        print(f"{len(diffs)} value(s) differ by more than {args.tol}:")
        print(tabulate(diffs, headers="keys", tablefmt="github", showindex=False, floatfmt=".6g"))
    for name, rows in ((args.a, only_a), (args.b, only_b)):
        if len(rows):
            print(f"{len(rows)} row(s) only in {name}:")
            print(tabulate(rows, headers="keys", tablefmt="github", showindex=False, floatfmt=".6g"))
    if not (len(diffs) or len(only_a) or len(only_b)):
        print(f"identical within {args.tol}")
        return 0
    return 1


def main(argv=None) -> int:
    from benchbench.registry import RegistryError
    from benchbench.suite import SuiteError

    args = _parser().parse_args(argv)
    try:
        return {"run": cmd_run, "validate": cmd_validate, "plugins": cmd_plugins, "compare": cmd_compare}[args.command](args)
    except (SuiteError, RegistryError, FileNotFoundError, ValueError) as e:
        print(f"benchbench: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
