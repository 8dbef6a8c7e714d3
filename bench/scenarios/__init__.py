"""One scenario per module; see the interface in bench/harness.py."""
