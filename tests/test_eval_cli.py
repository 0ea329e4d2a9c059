"""`geoagent eval run` as a person drives it: one table in the given order, Ctrl-C, --resume RUN_DIR."""

from __future__ import annotations

import signal
import subprocess
import time

from tests.openai_server import OpenAIServer
from tests.test_eval_run import ANSWER, CLI, _env, bench, eval_run, records  # noqa: F401 - bench is a fixture


def test_one_table_in_the_given_order_with_published_rows_last(bench, tmp_path):  # noqa: F811
    with OpenAIServer(default=ANSWER) as srv:
        run = eval_run(bench, tmp_path / "run", "--system", "zero-shot", "--system", "retrieval-only",
                       "--model", "test-vlm", "--base-url", srv.base_url, "--limit", "4", "--no-cache")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("System"))
    names = [line.split()[0] for line in lines[header + 2:header + 4]]
    assert names == ["zero-shot", "retrieval-only"]  # as given, not as finished
    body = lines[header + 2:]
    published = [i for i, line in enumerate(body) if "(published)" in line]
    assert published and min(published) == 2  # after both systems
    assert sum(line.startswith("System") for line in lines) == 1  # one table
    assert any(line.startswith("Published rows: the full im2gps3k test set (2997 photos)") for line in lines)


def test_ctrl_c_prints_the_resume_command_and_resume_run_dir_needs_nothing_else(bench, tmp_path):  # noqa: F811
    run_dir = tmp_path / "run"
    with OpenAIServer(default=ANSWER, delay=0.5) as srv:
        cmd = [*CLI, "eval", "run", "--dataset", str(bench["csv"]), "--images", str(bench["images"]),
               "--store", str(bench["store"]), "--run-dir", str(run_dir), "--name", "im2gps3k", "--system", "zero-shot",
               "--model", "test-vlm", "--base-url", srv.base_url, "--concurrency", "1", "--no-cache"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_env(OPENAI_API_KEY="sk-test"))
        results = run_dir / "results.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and not (results.exists() and len(results.read_text().splitlines()) >= 2):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "Traceback" not in err
        assert f"geoagent eval run --resume {run_dir}" in err
        done = len(records(run_dir))
        assert 2 <= done < 12
        # Only the run directory: dataset, system, model and endpoint come from run.json.
        resumed = subprocess.run([*CLI, "eval", "run", "--resume", str(run_dir)], capture_output=True, text=True,
                                 timeout=300, env=_env(OPENAI_API_KEY="sk-test"))
        assert resumed.returncode == 0, resumed.stderr
    pairs = [(r["config"], r["id"]) for r in records(run_dir)]
    assert len(pairs) == len(set(pairs)) == 12
    assert "sk-test" not in (run_dir / "run.json").read_text()


def test_resume_a_folder_that_is_no_run(tmp_path):
    run = subprocess.run([*CLI, "eval", "run", "--resume", str(tmp_path)], capture_output=True, text=True, timeout=60,
                         env=_env())
    assert run.returncode == 2 and run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1
