"""From graph stage to artifact: schedule, lower, export, and what an artifact records.

In: a graph after the simplify and precision stages. Out: a shared library and its manifest. stage.py builds a
stage (fuse -> schedule.py -> lower.py), manifest.py writes the manifest, cuda.py checks device code and stands
in for a missing GPU driver, dump.py writes intermediate forms (--dump), bundle.py packs an artifact with the
runtime libraries for a board (`kiln bundle`).
"""
