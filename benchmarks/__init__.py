"""Kiln's benchmark suite and the reproducible model builders it (and the tests and demo) use."""
