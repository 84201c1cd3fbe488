"""The benchmark harness: engine overhead, memory, Docker, time to agent, reap.

Not part of the test run (no module here is named `test_*`). Run it with
`scripts/bench.py`; docs/benchmarks.md records its output and the goals.
"""
