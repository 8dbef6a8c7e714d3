"""Run several fuzzers (fuzz/run.py) for a bounded time each and sum up what
they did: `make fuzz` calls this from the instrumented copy of the tree.

    python fuzz/campaign.py --seconds 10 --jobs 1 --work build/fuzz --crashes fuzz/crashes TARGET...

Each target's corpus is WORK/corpus/TARGET (seeded from fuzz/seeds/TARGET),
its log WORK/TARGET.log; a crash is saved as CRASHES/TARGET/crash-<sha1>.
Prints one line per target (executions, coverage, features, corpus size,
exit) and exits non-zero when any fuzzer found something."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def preload() -> str:
    import atheris

    return os.path.join(atheris.path(), "asan_with_fuzzer.so")


def run(target: str, args) -> tuple[str, int, str]:
    corpus = args.work / "corpus" / target
    crashes = args.crashes / target
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    for seed in (args.seeds / target).iterdir():
        if not (corpus / seed.name).exists():
            shutil.copyfile(seed, corpus / seed.name)
    log = args.work / f"{target}.log"
    env = dict(os.environ, LD_PRELOAD=preload(),
               ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:handle_abort=1")
    cmd = [sys.executable, str(HERE / "run.py"), target, f"-max_total_time={args.seconds}", "-max_len=20000",
           "-timeout=60", "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={crashes}/",
           str(corpus)]
    with open(log, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=HERE.parent)
    text = log.read_text(errors="replace")
    stats = dict(re.findall(r"^stat::(\w+):\s+(\d+)", text, re.M))
    cov = re.findall(r"cov: (\d+) ft: (\d+) corp: (\d+)", text)
    last = cov[-1] if cov else ("?", "?", "?")
    found = re.findall(r"^(?:artifact_prefix=.*; )?Test unit written to (\S+)", text, re.M)
    line = (f"fuzz {target}: {stats.get('number_of_executed_units', '?')} executions in {args.seconds}s, "
            f"cov {last[0]} ft {last[1]} corpus {last[2]}, exit {rc}"
            + (f", saved {' '.join(found)}" if found else ""))
    return target, rc, line


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("targets", nargs="+")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--crashes", type=Path, default=HERE / "crashes")
    p.add_argument("--seeds", type=Path, default=HERE / "seeds")
    args = p.parse_args()
    args.work = args.work.resolve()
    args.crashes = args.crashes.resolve()
    args.seeds = args.seeds.resolve()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda t: run(t, args), args.targets))
    for _, _, line in results:
        print(line, flush=True)
    failed = [t for t, rc, _ in results if rc != 0]
    if failed:
        print(f"fuzz: {' '.join(failed)} found something (logs under {args.work})", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
