"""What `cv-pipeline run` prints: step lines from a real in-process Dagster run, the log file
taking everything else (this process's and its children's output), epoch progress messages."""

import io
import re
import subprocess
import sys

import dagster as dg
import pytest

from cv_pipeline.console import ConsoleReporter, epoch_message, key_figure, parse_epoch_message, run_console


@dg.asset(check_specs=[dg.AssetCheckSpec("scores_in_range", asset="scored", blocking=True)])
def scored(context: dg.AssetExecutionContext):
    context.log.debug("a debug line nobody needs on the console")
    context.log.info(epoch_message(1, 2, {"train_loss": 0.5}))
    context.log.warning("3 images had no annotations")
    return dg.MaterializeResult(metadata={"primary_metric": "map_50", "map_50": 0.4567, "num_images": 10},
                                check_results=[dg.AssetCheckResult(passed=False, metadata={"message": "2 scores > 1"})])


@dg.asset(deps=[scored])
def downstream():
    return dg.MaterializeResult(metadata={"dagster/row_count": 12})


@dg.asset
def broken():
    raise ValueError("row 3, field 'bbox': not 4 numbers")


def run_and_capture(*assets) -> tuple[str, ConsoleReporter]:
    stream = io.StringIO()
    reporter = ConsoleReporter(stream)
    job = dg.Definitions(assets=list(assets), jobs=[dg.define_asset_job("job")]).resolve_job_def("job")
    job.with_logger_defs(reporter.logger_defs()).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), run_config=reporter.run_config(), raise_on_error=False)
    return stream.getvalue(), reporter


def test_a_run_prints_start_and_end_of_each_step_with_its_figure_and_nothing_else(capfd):
    out, reporter = run_and_capture(scored, downstream, broken)
    lines = out.splitlines()
    assert "  ... scored" in lines
    # written, then held back by its blocking check: a decision shown as such, not a crash
    assert re.search(r"^  !   scored  \d+\.\ds  map_50=0\.457; checks 0/1 passed; stopped by a blocking check$",
                     out, re.M), out
    assert "  !   check scored:scores_in_range FAILED (ERROR): 2 scores > 1" in lines
    assert "  !   scored: 3 images had no annotations" in lines  # warnings in full
    assert re.search(r"^  ERR broken  \d+\.\ds  ValueError: row 3, field 'bbox': not 4 numbers$", out, re.M), out
    assert "  --  downstream  skipped: an upstream step failed or was held back" in lines
    assert not re.search(r"^  ok  downstream", out, re.M)
    assert "debug line" not in out and "epoch 1/2" not in out  # not a terminal: no progress bar
    assert reporter.failed_checks == ["scored:scores_in_range (ERROR)"]
    # Dagster's own console logger still ran (into what is the log file under run_console)
    assert "a debug line nobody needs on the console" in capfd.readouterr().err


def test_run_console_sends_this_process_and_its_children_to_the_log_file(tmp_path, capfd):
    log = tmp_path / "logs" / "run.log"
    with run_console(log) as console:
        print("python print")
        sys.stderr.write("python stderr\n")
        subprocess.run([sys.executable, "-c", "import os; os.write(2, b'child stderr\\n')"], check=True)
        console.print("a line for the person")
    print("after the run")
    captured = capfd.readouterr()
    assert captured.out == "a line for the person\nafter the run\n"
    assert captured.err == ""
    assert log.read_text().splitlines() == ["python print", "python stderr", "child stderr"]


def test_verbose_leaves_the_console_alone(tmp_path, capsys):
    with run_console(tmp_path / "run.log", verbose=True) as console:
        print("everything")
        console.print("summary")
    assert capsys.readouterr().out == "everything\nsummary\n"


def test_epoch_messages_round_trip():
    message = epoch_message(3, 16, {"train_loss": 0.51234, "val_map_50": 0.3, "note": "text is skipped"})
    assert message == "epoch 3/16: train_loss=0.5123 val_map_50=0.3"
    assert parse_epoch_message(message) == (3, 16, "train_loss=0.5123 val_map_50=0.3")
    assert parse_epoch_message("epoch three") is None


@pytest.mark.parametrize("metadata, expected", [
    ({"primary_metric": "miou", "miou": 0.5}, "miou=0.500"),
    ({"monitor": "val_acc", "val_acc": 0.91, "task": "classification"}, "val_acc=0.910"),
    ({"decision": "keep", "model_name": "m", "version": "3"}, "decision=keep, m v3"),
    ({"dagster/row_count": 542, "delta_version": 4}, "542 rows, Delta v4"),
    ({"monitor": "val_acc"}, ""),
    ({"accepted": {"images": 9, "annotations": 20}, "quarantined": {"images": 3, "annotations": 2},
      "dagster/row_count": 9}, "accepted 9 images, 20 annotations; quarantined 5"),
])
def test_key_figure_comes_from_what_the_asset_says_about_itself(metadata, expected):
    assert key_figure(metadata) == expected
