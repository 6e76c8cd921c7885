"""bench/compare.py's parts: a driver module per system, the worker apps, shared code."""
