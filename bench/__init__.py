"""Benchmarks of finetune-bot against the limits it lives under and the naive way of doing its job.

`python -m bench` starts the real bot (`python -m bot`, a subprocess) against the fake OpenAI and
fake Slack from `tests/fakes` on loopback, runs every benchmark, prints a Markdown table and writes
the figures (with a description of the machine) to `bench/results/`. See BENCHMARKS.md.
"""
