"""Benchmark harness: lb against HAProxy and nginx in one run.

Run from the repository root: ``python -m bench --help``. See bench/README.md.
The harness never imports lb; it starts ``python -m lb run`` like any user would.
"""
