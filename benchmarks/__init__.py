"""Reproducible benchmarks of Switchyard (see README.md in this folder)."""
