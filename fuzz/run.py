"""One coverage-guided fuzzer: `python fuzz/run.py TARGET [libFuzzer options] [corpus dirs]`.

atheris drives the target of fuzz/targets.py with libFuzzer. Coverage comes
from the compiled module, built with -fsanitize=fuzzer-no-link,address by
`make fuzz` (LB_FUZZ=1), and from the Python code the target runs (the
references, the config loader), instrumented here. `make fuzz` runs each
target for FUZZ_SECONDS with its corpus (seeded from fuzz/seeds) and saves
any crash under fuzz/crashes/TARGET/, where tests/test_fuzz_cases.py replays it.
"""

from __future__ import annotations

import os
import sys

import atheris

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The references (tests.reference) are the oracle, not the code under test:
# instrumented, their byte-by-byte loops are slower than the compiled parser
# by a thousand times. The config loader is the code under test of its target.
from fuzz.targets import TARGETS  # noqa: E402

with atheris.instrument_imports(include=["lb.config"]):
    import lb.config  # noqa: E402,F401


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{'|'.join(TARGETS)}}} [libFuzzer options] [corpus dirs]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
