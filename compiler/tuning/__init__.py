"""`kiln tune`: MetaSchedule search for faster kernel schedules, and the database `kiln compile` applies.

In: a model's fused kernels (the same ones compile builds) and a budget. Out: records appended to
tuning_logs/TARGET/ (database.py: the JSON database, its notes, locking, pruning and how compile reads it).
tune.py is the entry point, search.py the Tuner, metaschedule.py its hooks into MetaSchedule, measure.py how
candidates are built and timed (here or through an RPC tracker), state.py the per-kernel budget and summary,
progress.py the display, stop.py the time budget and Ctrl-C.
"""
