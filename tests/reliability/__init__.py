"""Reliability and security cases: concurrency, database outages, crashes, fuzzing, secrets."""
