"""Benchmarks of unet-med against MONAI's reference networks and inferer.

Run from the repository root, e.g. ``.venv/bin/python -m bench.network --quick``. Each script prints
a table and, as its last line, one JSON object of named figures (see docs/BENCHMARKS.md).
"""
