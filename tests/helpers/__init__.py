"""Helpers shared by the tests: scripts the tests launch as processes (distributed and
multi-worker checks, run.py drivers), the tiny settings as a Config and as flags (configs),
independent NumPy references (numpy_refs), flags -> Config (cli) and small file builders
(files)."""
