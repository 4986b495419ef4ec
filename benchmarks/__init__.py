"""Benchmarks: `harness/` is the runtime harness behind `nano bench` (a library the CLI imports);
the modules beside it are experiment scripts (`python -m benchmarks.NAME`) that only measure
and write results."""
