"""Benchmarks of the relay against the direct-upload limit: ``python -m bench``.

Each section starts what it measures (SeaweedFS, relay processes, nginx) on
loopback, stops it by PID, and returns plain data that ``bench.report`` turns
into a table, JSON and docs/benchmarks.md.
"""
