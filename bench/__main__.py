"""python -m bench [SCENARIO ...] [--duration 10s] [--connections 64] [--repeat N] [--json] [--only lb,haproxy,nginx]
[--baseline DIR]
python -m bench soak [--minutes N] [--json] [--keep-workdir]"""

from __future__ import annotations

import argparse
import signal
import sys

from bench import harness


def _duration(text: str) -> float:
    try:
        return harness.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _targets(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in harness.ONLY_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(
            f"choose from {','.join(harness.ONLY_NAMES)} (got {text!r})")
    return names


def _checkout(text: str):
    try:
        return harness.baseline_checkout(text)
    except harness.BenchError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    scenarios = harness.load_scenarios()
    listing = "\n".join(f"  {name:<14} {mod.SUMMARY}" for name, mod in scenarios.items())
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Compare lb with HAProxy and nginx (and the origin directly) in one run.",
        epilog=f"scenarios (default: every {', '.join(p + '*' for p in harness.DEFAULT_SCENARIO_PREFIXES)} one):\n{listing}\n\n"
               "Figures are comparable only within one run; read the ratios.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="scenarios to run")
    p.add_argument("--duration", type=_duration, default=10.0, metavar="D",
                   help="wrk duration per target, e.g. 10s (default 10s; whole seconds)")
    p.add_argument("--warmup", type=_duration, default=1.0, metavar="D",
                   help="untimed wrk run before each measurement (default 1s; 0 = none)")
    p.add_argument("--connections", "-c", type=int, default=64, metavar="N",
                   help="wrk connections (default 64; wrk always runs 1 thread)")
    p.add_argument("--repeat", type=int, default=1, metavar="N",
                   help="rounds per wrk scenario, targets in rotated order; figures are "
                        "medians, ratios show their per-round min..max (default 1)")
    p.add_argument("--idle-conns", type=int, default=4000, metavar="N",
                   help="idle connections for tcp_idle_rss and https_idle_mem (default 4000)")
    p.add_argument("--only", type=_targets, default=harness.ONLY_NAMES, metavar="LIST",
                   help="proxies to run, comma-separated (default lb,haproxy,nginx,varnish; "
                        "varnish runs in the cache scenarios only)")
    p.add_argument("--baseline", type=_checkout, metavar="DIR",
                   help=f"also run lb from DIR, another lb checkout with its compiled module "
                        f"built in place, as target {harness.BASELINE} (same config as lb), "
                        f"and report lb/{harness.BASELINE}: a change before and after in one run")
    p.add_argument("--no-direct", dest="direct", action="store_false",
                   help="skip the direct-to-origin ceiling")
    p.add_argument("--json", dest="as_json", action="store_true",
                   help="print one JSON document on stdout and nothing else")
    p.add_argument("--save", action="store_true",
                   help="also write the JSON report to bench/results/<timestamp>.json")
    p.add_argument("--keep-workdir", action="store_true",
                   help="keep the temp dir with configs and logs (always kept on failure)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:
        # lb alone for minutes, not a comparison: its own options and report (bench/soak.py)
        from bench import soak
        return soak.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.connections < 1 or args.idle_conns < 1 or args.repeat < 1:
        print("bench: --connections, --idle-conns and --repeat must be positive", file=sys.stderr)
        return 2
    if args.baseline is not None and "lb" not in args.only:
        print(f"bench: --baseline compares lb with {harness.BASELINE}: keep lb in --only", file=sys.stderr)
        return 2
    opts = harness.Options(
        scenarios=args.scenarios, duration_s=args.duration, warmup_s=args.warmup,
        connections=args.connections, idle_conns=args.idle_conns, only=args.only,
        direct=args.direct, as_json=args.as_json, save=args.save,
        keep_workdir=args.keep_workdir, repeat=args.repeat, baseline=args.baseline)

    # SIGTERM takes the same path as Ctrl-C: stop every child, then exit.
    def _on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_term)
    return harness.run(opts)


if __name__ == "__main__":
    sys.exit(main())
