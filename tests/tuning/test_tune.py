"""`kiln tune`: a short tune writes a valid database, resumes without redoing finished kernels, rechecks, prunes and
repairs its log, and `kiln compile` applies its records (and still matches ONNX Runtime). Tunes stopped from
outside and tunes through an RPC tracker: tests/test_tune_runs.py."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import compiler
from compiler.cli import main
from compiler.targets import get_target
from compiler.tuning import database as tuning
from compiler.tuning import measure
from compiler.tuning import state as tune_state
from compiler.tuning import tune
from runtime.errors import KilnError
from tests.models import TUNE_TRIALS as TRIALS
from tests.models import assert_matches_onnxruntime, log_records, save, two_conv_model


def copy_log(folder: Path, copy: Path, with_notes: bool = False) -> Path:
    """A copy of the database in FOLDER (and Kiln's notes, WITH_NOTES) that a test may change."""
    copy.mkdir()
    for name in (tuning.WORKLOADS, tuning.RECORDS, *((tuning.NOTES,) if with_notes else ())):
        (copy / name).write_bytes((folder / name).read_bytes())
    return copy


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save(two_conv_model(), tmp_path_factory.mktemp("tune"), "two_conv")


@pytest.fixture(scope="module")
def tuned(model):
    """A first short tune into a fresh folder (shared by the tests below, which only read it or add to it)."""
    folder = model.parent / "log"
    summary = tune.tune(model, target="x86-avx512", trials=TRIALS, log_dir=folder, keep=100)
    return folder, summary


def test_short_tune_writes_a_valid_database(tuned):
    folder, summary = tuned
    assert summary.stopped == "budget"
    searched = summary.searched
    assert len(searched) == 2 and summary.trials_run >= TRIALS
    for task in searched:
        assert task.trials >= task.budget > 0
        assert task.default_us and task.best_us and task.best_us <= task.default_us
    lines = log_records(folder)
    assert len(lines) == summary.kept and len(lines) >= 2  # at least the two default schedules
    for line in lines:
        workload, (_trace, run_secs, _target, _args) = json.loads(line)
        assert isinstance(workload, int) and all(t > 0 for t in run_secs)
    db = tuning.open_database(folder)
    assert len(db.get_all_tuning_records()) == len(lines)
    notes = tuning.read_notes(folder)
    assert notes["target"] == "x86-avx512" and notes["tvm_target"]["mcpu"] == "icelake-server"
    assert sum(t["trials"] for t in notes["tasks"].values()) == summary.trials_run
    assert {notes["tasks"][t.key]["cache"] for t in searched} == {"cold"}  # the default: timed as runs meet them


def test_second_run_resumes_and_skips_finished_kernels(tuned, model):
    folder, first = tuned
    before = log_records(folder)
    again = tune.tune(model, target="x86-avx512", trials=TRIALS, log_dir=folder, keep=100)
    assert again.stopped == "nothing to do" and again.trials_run == 0
    assert log_records(folder) == before
    assert [t.trials for t in again.searched] == [t.trials for t in first.searched]


def test_compile_applies_records_and_still_matches_onnxruntime(tuned, model, tmp_path):
    folder, _summary = tuned
    artifact = compiler.compile(model, target="x86-avx512", output=tmp_path / "tuned.so", tuning_log=folder)
    assert artifact.manifest.tuning["tasks_tuned"] == 2
    assert artifact.manifest.tuning["records"] == len(log_records(folder))
    assert_matches_onnxruntime(model, artifact.path)
    untuned = compiler.compile(model, target="x86-avx512", output=tmp_path / "plain.so", tuning_log="none")
    assert untuned.manifest.tuning["tasks_tuned"] == 0


def test_recheck_keeps_the_default_schedule_where_it_beats_the_best_record(tuned, model, tmp_path, monkeypatch):
    """After an upgrade of Kiln's default schedules: --recheck times each tuned kernel's best record against the
    current default (timings faked here: the default 1 us, every record 1 s) and keeps the faster, ranking it
    by the records' own times (not this run's, which a busy machine inflates)."""
    folder, _summary = tuned
    copy = copy_log(folder, tmp_path / "recheck", with_notes=True)

    def fake_timings(_builder, _runner, mods, _target):
        return [[1.0] if i % 2 == 0 else [1e-6] for i in range(len(mods))], []

    monkeypatch.setattr(measure, "measure_schedules", fake_timings)
    summary = tune.tune(model, target="x86-avx512", log_dir=copy, keep=100, recheck=True)
    assert summary.stopped == "rechecked" and summary.trials_run == 0 and len(summary.searched) == 2
    assert all(task.best_us == task.default_us == pytest.approx(1.0) for task in summary.searched)
    by_kernel = {}
    for record in tuning.open_database(copy).get_all_tuning_records():
        by_kernel.setdefault(tuning.workload_key(record.workload.mod), []).append(record)
    for task in summary.searched:
        kept = sorted(sum(float(t) for t in r.run_secs) for r in by_kernel[task.key])
        before = sorted(sum(float(t) for t in r.run_secs) for r in tuning.open_database(folder)
                        .get_all_tuning_records() if tuning.workload_key(r.workload.mod) == task.key)
        # the default, committed as the kernel's best record on the records' own time scale (the best claim
        # times the paired ratio, 1e-6 here), none of the records dropped
        assert kept == pytest.approx(sorted([before[0] * 1e-6, *before]))


def test_kernels_timed_the_other_way_are_retimed_and_searched_again(tuned, model, tmp_path):
    """A warm tune on a log tuned cold times each kernel's best cold records again warm, drops every cold record
    (cold and warm run times cannot rank in one list) and searches the kernel again from the retimed ones; its
    notes say how each kernel was timed."""
    folder, first = tuned
    copy = copy_log(folder, tmp_path / "warm", with_notes=True)
    before = {t.key: t.trials for t in first.searched}
    lines = []
    again = tune.tune(model, target="x86-avx512", trials=TRIALS, log_dir=copy, keep=100, cache="warm",
                      report=lambda _summary, message: lines.append(message))
    assert any("best records of 2 kernel(s) again warm (they were timed cold)" in line for line in lines)
    assert {t.key for t in again.searched} == set(before) and again.trials_run >= TRIALS
    # from scratch: each kernel's trials are this run's alone, not the cold run's plus these
    assert sum(t.trials for t in again.searched) == again.trials_run
    assert all(t.cache == "warm" for t in again.searched)
    notes = tuning.read_notes(copy)["tasks"]
    assert {notes[t.key]["cache"] for t in again.searched} == {"warm"}
    repeats = lambda folder_: {len(json.loads(line)[1][1]) for line in log_records(folder_)}  # noqa: E731
    assert repeats(folder) == {measure.EVALUATORS["cold"].repeat}
    assert repeats(copy) == {measure.EVALUATORS["warm"].repeat}  # no cold record left beside the warm ones
    best_cold = {}
    for line in log_records(folder):
        workload, (trace, run_secs, *_rest) = json.loads(line)
        if sum(run_secs) < best_cold.get(workload, (1e9, None))[0]:
            best_cold[workload] = (sum(run_secs), json.dumps(trace))
    traces = {json.dumps(json.loads(line)[1][0]) for line in log_records(copy)}
    assert all(trace in traces for _t, trace in best_cold.values())  # the best schedules carried over, retimed


def test_drop_workloads_removes_a_kernel_and_renumbers_the_rest(tuned, tmp_path):
    folder, _summary = tuned
    copy = copy_log(folder, tmp_path / "drop")
    workloads = [json.loads(line)[0] for line in (copy / tuning.WORKLOADS).read_text().splitlines()]
    kept = [line for line in log_records(copy) if json.loads(line)[0] != 0]
    assert tuning.drop_workloads(copy, {workloads[0]}) == len(log_records(folder)) - len(kept)
    left = [json.loads(line)[0] for line in (copy / tuning.WORKLOADS).read_text().splitlines()]
    assert left == workloads[1:]
    assert [json.loads(line)[1] for line in log_records(copy)] == [json.loads(line)[1] for line in kept]
    assert {json.loads(line)[0] for line in log_records(copy)} == set(range(len(left)))


def test_cold_timing_flushes_the_caches_and_an_unknown_setting_is_refused():
    cold, warm = measure.EVALUATORS["cold"], measure.EVALUATORS["warm"]
    assert cold.enable_cpu_cache_flush and cold.number == 1  # every timed call after a flush
    assert not warm.enable_cpu_cache_flush
    with pytest.raises(KilnError, match="--cache must be one of cold, warm"):
        measure.make_runner(1, cache="lukewarm")


def test_a_log_for_another_target_is_refused(tuned, model, tmp_path):
    folder, _summary = tuned
    with pytest.raises(KilnError, match="written for target 'x86-avx512'"):
        compiler.compile(model, target="host", output=tmp_path / "host.so", tuning_log=folder)


def test_records_of_another_tvm_version_are_reported_not_applied(tuned, model, tmp_path):
    folder, _summary = tuned
    copy = copy_log(folder, tmp_path / "old", with_notes=True)
    notes = tuning.read_notes(copy)
    tuning.write_notes(copy, {**notes, "tvm_version": "0.1.0"})
    lines = []
    artifact = compiler.compile(model, target="x86-avx512", output=tmp_path / "a.so", tuning_log=copy,
                                progress=lines.append)
    assert artifact.manifest.tuning["tasks_tuned"] == 0
    assert any("written by TVM 0.1.0" in line for line in lines)


def test_prune_keeps_the_fastest_record_of_each_workload(tuned, tmp_path):
    folder, _summary = tuned
    copy = copy_log(folder, tmp_path / "prune")
    best: dict[int, float] = {}
    for line in log_records(copy):
        workload, (_trace, run_secs, *_rest) = json.loads(line)
        if all(t < 1e9 for t in run_secs):
            best[workload] = min(best.get(workload, 1e9), sum(run_secs) / len(run_secs))
    before, after = tuning.prune(copy, keep=1)
    assert after == len(best) <= before
    kept = {json.loads(line)[0]: json.loads(line)[1][1] for line in log_records(copy)}
    assert {w: sum(t) / len(t) for w, t in kept.items()} == best


def test_prune_drops_workloads_without_records_and_renumbers_the_rest(tuned, model, tmp_path):
    folder, _summary = tuned
    copy = copy_log(folder, tmp_path / "unused", with_notes=True)
    workloads = (copy / tuning.WORKLOADS).read_text().splitlines()
    first_key = json.loads(workloads[0])[0]
    others = [line for line in log_records(copy) if json.loads(line)[0] != 0]
    (copy / tuning.RECORDS).write_text("".join(line + "\n" for line in others))
    tuning.prune(copy, keep=4)
    left = (copy / tuning.WORKLOADS).read_text().splitlines()
    assert len(left) == len(workloads) - 1 and first_key not in {json.loads(line)[0] for line in left}
    assert {json.loads(line)[0] for line in log_records(copy)} == set(range(len(left)))
    artifact = compiler.compile(model, target="x86-avx512", output=tmp_path / "pruned.so", tuning_log=copy)
    assert artifact.manifest.tuning["tasks_tuned"] == 1  # of the 2 the full log tunes
    assert_matches_onnxruntime(model, artifact.path)


def test_repair_drops_a_torn_last_line(tuned, tmp_path):
    folder, _summary = tuned
    copy = copy_log(folder, tmp_path / "torn")
    whole = log_records(copy)
    with open(copy / tuning.RECORDS, "a") as f:
        f.write(whole[0][: len(whole[0]) // 2])  # what a kill in the middle of an append leaves
    assert tuning.repair(copy) == 1
    assert log_records(copy) == whole
    assert len(tuning.open_database(copy).get_all_tuning_records()) == len(whole)


def test_a_prune_killed_between_its_two_files_is_finished_or_undone(tuned, tmp_path, monkeypatch):
    """Pruning renumbers the records and drops workloads: the two files must change together. A kill after the
    new pair is committed is finished by the next repair; one before it leaves the old pair."""
    folder, _summary = tuned
    old_records, old_workloads = log_records(folder), (folder / tuning.WORKLOADS).read_text()
    one = json.loads(old_records[0])[0]
    killed = copy_log(folder, tmp_path / "killed")
    (killed / tuning.RECORDS).write_text("".join(line + "\n" for line in old_records
                                                 if json.loads(line)[0] == one))
    real_replace = tuning.os.replace

    def replace_then_die(src, dst):
        real_replace(src, dst)
        if Path(src).parent.name == tuning.PENDING:  # committed, one file moved: the other is still the old one
            raise KeyboardInterrupt

    monkeypatch.setattr(tuning.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt):
        tuning.prune(killed, keep=4)
    monkeypatch.setattr(tuning.os, "replace", real_replace)
    assert (killed / tuning.PENDING).is_dir()
    tuning.repair(killed)
    assert not (killed / tuning.PENDING).exists()
    assert len(_lines(killed / tuning.WORKLOADS)) == 1
    assert [json.loads(line)[0] for line in log_records(killed)] == [0] * len(log_records(killed))
    assert len(tuning.open_database(killed).get_all_tuning_records()) == len(log_records(killed))

    uncommitted = copy_log(folder, tmp_path / "uncommitted")
    staging = uncommitted / (tuning.PENDING + ".half")
    staging.mkdir()
    (staging / tuning.RECORDS).write_text("[0,")
    tuning.repair(uncommitted)
    assert not staging.exists()
    assert log_records(uncommitted) == old_records
    assert (uncommitted / tuning.WORKLOADS).read_text() == old_workloads


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().split("\n") if line.strip()]


def test_allocation_follows_weight_times_flops():
    tasks = [tune_state.TaskState("a", "big", 2, 100.0), tune_state.TaskState("b", "small", 1, 50.0),
             tune_state.TaskState("c", "copy", 1, 0.0)]
    tune_state.allocate(tasks, 500)
    assert tasks[0].budget == 400 and tasks[1].budget == 100 and tasks[2].budget == 0


@pytest.mark.parametrize("args, message", [
    (["--trials", "0"], "--trials must be at least 1"),
    (["--rpc", "nohostport", "--key", "k"], "--rpc expects HOST:PORT"),
    (["--target", "nosuch"], "unknown target 'nosuch'"),
])
def test_tune_errors_are_one_line(model, args, message):
    result = CliRunner().invoke(main, ["tune", str(model), *args])
    assert result.exit_code == 1 and message in result.output
    assert "Traceback" not in result.output


def test_tune_refuses_symbolic_shapes_and_names_the_fix(tmp_path):
    dynamic = two_conv_model()
    dynamic.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    path = save(dynamic, tmp_path, "dyn")
    result = CliRunner().invoke(main, ["tune", str(path), "--log", str(tmp_path / "log")])
    assert result.exit_code == 1 and "--input-shape x=1x16x14x14" in result.output


def test_progress_redraws_a_table_on_a_terminal_and_logs_lines_otherwise():
    import io

    from compiler.tuning.progress import TuneDisplay

    summary = tune_state.TuneSummary(model="m.onnx", target="x86-avx512", database="db", tasks=[
        tune_state.TaskState("a", "fused_conv2d_add_relu", 2, 100.0, budget=64, trials=32, default_us=500.0,
                             best_us=400.0),
        tune_state.TaskState("b", "transpose", 1, 0.0)])
    summary.trials_run, summary.seconds = 32, 60.0
    screen = io.StringIO()
    live = TuneDisplay(screen, live=True)
    live(summary, "")
    live(summary, "")
    text = screen.getvalue()
    assert text.count("\x1b[3F\x1b[J") == 1  # the second frame replaces the first (headline + header + 1 row)
    assert "1 kernel(s) searched, trials 32/64, searched kernels 1.00 -> 0.80 ms" in text
    assert "fused_conv2d_add_relu" in text and "32/64" in text and "1.25x" in text and "transpose" not in text
    log = io.StringIO()
    TuneDisplay(log, live=False)(summary, "")
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and "trials 32/64" in lines[0] and "left" in lines[0] and "\x1b" not in lines[0]


def test_a_second_tune_on_the_same_log_is_refused_while_one_runs(model, tmp_path):
    folder = tmp_path / "locked"
    with tuning.writer_lock(folder):
        with pytest.raises(KilnError, match=f"another kiln tune \\(pid {os.getpid()}\\) is writing"):
            tune.tune(model, target="x86-avx512", trials=TRIALS, log_dir=folder)
    with tuning.writer_lock(folder):  # released: the next holder gets it
        pass


def test_every_kernel_gets_a_replayable_default_schedule_as_its_seed(tmp_path):
    """Kiln's rules or, for a layer norm over two axes, dlight's: the seed record must replay to the same schedule.
    Kiln's loop kernels (the row softmax) carry their schedule and are no task of `kiln tune`."""
    import tvm
    import tvm_ffi
    from onnx import helper, numpy_helper
    from tvm.s_tir import meta_schedule as ms

    from compiler import frontend
    from compiler.passes.relax_util import is_scheduled
    from compiler.pipeline import optimize_graph
    from compiler.schedules import default_schedule
    from tests.models import F32, finish

    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], axis=1),  # over two axes: dlight's
             helper.make_node("Softmax", ["n"], ["y"], axis=-1)]
    graph = helper.make_graph(nodes, "norm_softmax", [helper.make_tensor_value_info("x", F32, [8, 10, 100])],
                              [helper.make_tensor_value_info("y", F32, [8, 10, 100])],
                              [numpy_helper.from_array(np.ones((10, 100), np.float32), "g"),
                               numpy_helper.from_array(np.zeros((10, 100), np.float32), "b")])
    path = save(finish(graph, 17), tmp_path, "norm_softmax")
    preset = get_target("x86-avx512")
    mod, _times = optimize_graph(frontend.load_model(path), preset)
    target = tvm.target.Target({**preset.tvm_target, "num-cores": 2})
    extracted = ms.relax_integration.extract_tasks(mod, target)
    assert any(is_scheduled(t.dispatched[0]["main"]) for t in extracted)  # the row softmax
    tasks = [t for t in extracted if not is_scheduled(t.dispatched[0]["main"])]
    assert tasks
    for task in tasks:
        kernel = task.dispatched[0]
        seed = default_schedule(kernel, preset.vector_lanes_fp32, target)
        assert seed is not None, task.task_name
        replay = tvm.s_tir.Schedule(kernel)
        seed.trace.apply_to_schedule(replay, remove_postproc=False)
        assert tvm_ffi.structural_equal(replay.mod, seed.mod), task.task_name
