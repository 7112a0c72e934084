"""Helpers shared by the tests: scripts the tests launch as processes (distributed and
multi-worker checks, run.py drivers) and small shared builders (configs)."""
