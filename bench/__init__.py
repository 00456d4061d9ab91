"""Benchmarks of ome-session: speed is measured here (``python -m bench``), never asserted in tests."""
