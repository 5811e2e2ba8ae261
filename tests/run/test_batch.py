"""`edgedp batch`: outputs per capture, the manifest, failures that do not stop the batch,
--resume (also after a killed run), staging (no half-written outputs), the gallery, the summary,
one-line errors, --jobs, and the Ray backend on a local Ray instance.

The fast tests run in this process (``--jobs 1``) with the fake fit of test_cli_fit; the slow
ones run real fits in subprocesses or Ray workers on small synthetic captures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from tests.cli.test_fit import FakeFit
from typer.testing import CliRunner

import edgedp.fit.pipeline
from edgedp.run import MANIFEST_NAME, STAGING_PREFIX, read_manifest, threads_per_job
from edgedp.run import COMPLETE_FILES
from edgedp.cli import app

runner = CliRunner()
H, W = 37, 53
EDGEDP = str(Path(sys.executable).with_name("edgedp"))


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *words):
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    for word in words:
        assert word in err, (word, err)


@pytest.fixture
def fake(monkeypatch) -> FakeFit:
    fake = FakeFit()
    monkeypatch.setattr(edgedp.fit.pipeline, "fit_scene", fake)
    return fake


def make_captures(folder: Path, names=("a", "b", "c"), shape=(H, W)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for name in names:
        for side in ("left", "right"):
            cv2.imwrite(str(folder / f"{name}_{side}.png"), (g.random(shape) * 50000 + 5000).astype(np.uint16))
    return folder


def staging_left(out: Path) -> list[str]:
    return [p.name for p in out.iterdir() if p.name.startswith(STAGING_PREFIX) or p.name.startswith(".edgedp-")]


def test_batch_writes_outputs_manifest_gallery_and_summary(fake, tmp_path):
    inputs = make_captures(tmp_path / "in")
    out = tmp_path / "out"
    result = run("batch", inputs, "-o", out, "--preset", "fast", "--iterations", 4, "--seed", 2)
    assert result.exit_code == 0, result.output
    for name in ("a", "b", "c"):
        for f in COMPLETE_FILES:
            assert (out / name / f).is_file(), (name, f)
    assert staging_left(out) == []
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["name"] for r in records] == ["a", "b", "c"] and {r["status"] for r in records} == {"done"}
    a = records[0]
    assert a["left"] == str(inputs / "a_left.png") and a["right"] == str(inputs / "a_right.png") and a["out"] == "a/"
    assert a["settings"]["preset"] == "fast" and a["settings"]["iterations"] == "4" and a["settings"]["seed"] == 2
    assert a["threads"] == threads_per_job(1) and a["size_hw"] == [H, W] and a["error"] is None
    assert a["transfer"]["used"] == "linear" and a["peak_rss_mib"] > 10 and a["seconds"]["total"] > 0
    # Every capture got the same options, and the fit saw them.
    assert all(call["config"].stage2_iterations == 4 and call["config"].seed == 2 for call in fake.calls)
    report = json.loads((out / "b" / "report.json").read_text())
    assert report["settings"]["out"] == str(out / "b") and report["settings"]["left"].endswith("b_left.png")
    page = (out / "index.html").read_text()
    for name in ("a", "b", "c"):
        assert f'src="{name}/preview.png"' in page
    assert "http" not in page  # nothing to fetch: opens offline
    assert "capture" in result.stdout and "3 done, 0 failed, 0 skipped" in result.stdout
    summary = [line for line in result.stdout.splitlines() if line.startswith(("a ", "b ", "c "))]
    assert len(summary) == 3 and all(" done " in line for line in summary)


def test_a_failed_capture_does_not_stop_the_batch(fake, tmp_path):
    inputs = make_captures(tmp_path / "in")
    cv2.imwrite(str(inputs / "b_right.png"), np.full((H + 2, W), 9000, np.uint16))  # size mismatch
    out = tmp_path / "out"
    result = run("batch", inputs, "-o", out, "--iterations", 3)
    assert result.exit_code == 1, result.output
    records = read_manifest(out)
    assert records["a"]["status"] == records["c"]["status"] == "done"
    assert records["b"]["status"] == "failed" and "size mismatch" in records["b"]["error"] and "\n" not in records["b"]["error"]
    assert not (out / "b").exists() and staging_left(out) == []
    assert "failed" in (out / "index.html").read_text() and "size mismatch" in (out / "index.html").read_text()
    assert "2 done, 1 failed" in result.stdout
    # --resume fits only what is missing once the input is fixed.
    cv2.imwrite(str(inputs / "b_right.png"), np.full((H, W), 9000, np.uint16) + np.arange(W, dtype=np.uint16))
    fake.calls.clear()
    again = run("batch", inputs, "-o", out, "--iterations", 3, "--resume")
    assert again.exit_code == 0, again.output
    assert len(fake.calls) == 1
    records = read_manifest(out)
    assert records["b"]["status"] == "done" and records["a"]["status"] == records["c"]["status"] == "skipped"
    assert records["a"]["seconds"]["total"] > 0  # the skipped line carries the earlier fit's numbers
    assert "1 done, 0 failed, 2 skipped" in again.stdout


def test_a_crash_while_writing_leaves_no_half_written_outputs(fake, tmp_path, monkeypatch):
    import edgedp.formats.bundle

    inputs = make_captures(tmp_path / "in", names=("a", "b"))
    out = tmp_path / "out"
    real = edgedp.formats.bundle.save_bundle
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # the second capture dies after its images are written
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(edgedp.formats.bundle, "save_bundle", flaky)
    result = run("batch", inputs, "-o", out)
    assert result.exit_code == 1
    record = read_manifest(out)["b"]
    assert record["status"] == "failed" and record["error"].startswith("internal error RuntimeError: disk on fire")
    assert not (out / "b").exists() and staging_left(out) == [] and (out / "a" / "report.json").is_file()


def test_refusals_and_one_line_errors(fake, tmp_path):
    inputs = make_captures(tmp_path / "in", names=("a",))
    out = tmp_path / "out"
    assert run("batch", inputs, "-o", out).exit_code == 0
    before = (out / "a" / "report.json").read_bytes()
    assert_one_line_error(run("batch", inputs, "-o", out), "exists", "--resume", "--overwrite")
    assert_one_line_error(run("batch", inputs, "-o", out, "--resume", "--overwrite"), "--resume", "--overwrite")
    assert (out / "a" / "report.json").read_bytes() == before
    fake.calls.clear()
    assert run("batch", inputs, "-o", out, "--overwrite").exit_code == 0 and len(fake.calls) == 1
    assert (out / "a" / "report.json").read_bytes() != before
    assert len((out / MANIFEST_NAME).read_text().splitlines()) == 1  # --overwrite starts a new manifest

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    assert_one_line_error(run("batch", inputs, "-o", blocker), "file.txt")
    assert_one_line_error(run("batch", "-o", tmp_path / "o2"), "no captures")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(run("batch", tmp_path / "empty", "-o", tmp_path / "o3"), "no DP pairs")
    assert_one_line_error(run("batch", inputs, "-o", tmp_path / "o4", "--camera", "leica"), "--camera", "leica")
    assert_one_line_error(run("batch", inputs, "-o", tmp_path / "o5", "--transfer", "log"), "--transfer", "log")
    assert_one_line_error(run("batch", inputs, "-o", tmp_path / "o6", "--iterations", "many"), "--iterations")
    assert_one_line_error(run("batch", inputs, "-o", tmp_path / "o7", "--backend", "slurm"), "--backend", "slurm")
    assert_one_line_error(run("batch", inputs, "-o", tmp_path / "o8", "--jobs", 0), "--jobs")
    assert fake.calls == [] or len(fake.calls) == 1  # none of the refused runs fitted anything
    assert not (tmp_path / "o6").exists() or not any((tmp_path / "o6").iterdir())


def test_resume_cleans_stale_staging_and_keeps_conflicting_folders(fake, tmp_path):
    inputs = make_captures(tmp_path / "in", names=("a", "b"))
    out = tmp_path / "out"
    assert run("batch", inputs, "-o", out).exit_code == 0
    stale = out / f"{STAGING_PREFIX}b-deadbeef"
    (stale / "scene").mkdir(parents=True)
    (stale / "allinfocus.png").write_bytes(b"half")
    user_file = out / "b" / "notes.txt"
    (out / "b" / "report.json").unlink()  # b incomplete now, and holds a file of the user's
    user_file.write_text("mine")
    fake.calls.clear()
    result = run("batch", inputs, "-o", out, "--resume")
    assert result.exit_code == 1
    assert not stale.exists() and user_file.read_text() == "mine" and fake.calls == []
    assert "does not hold complete outputs" in read_manifest(out)["b"]["error"]


def test_ray_backend_without_ray_names_the_extra(fake, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    inputs = make_captures(tmp_path / "in", names=("a",))
    result = run("batch", inputs, "-o", tmp_path / "out", "--backend", "ray")
    assert_one_line_error(result, "pip install 'edgedp[cluster]'")
    assert fake.calls == []


def test_threads_per_job():
    assert threads_per_job(1, 8) == 8 and threads_per_job(2, 8) == 4 and threads_per_job(3, 8) == 2 and threads_per_job(16, 8) == 1


# -------------------------------------------------------------------------- real fits (slow)


def synth_captures(folder: Path, count: int = 3, size: str = "41x57") -> Path:
    for i in range(count):
        made = run("synth", "-o", folder / f"s{i}", "--size", size, "--seed", i + 1, "--max-radius", 3)
        assert made.exit_code == 0, made.output
    return folder


FIT = ("--preset", "fast", "--iterations", "8")


@pytest.mark.slow
def test_killed_batch_resumes_without_redoing_finished_work(tmp_path):
    inputs = synth_captures(tmp_path / "in", count=4, size="81x113")
    out = tmp_path / "out"
    cmd = [EDGEDP, "batch", str(inputs), "-o", str(out), *FIT, "--iterations", "40", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(read_manifest(out)) < 1:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # mid-batch: the next capture is being fitted
    proc.wait()
    first = read_manifest(out)
    assert 1 <= len(first) < 4, first
    done_before = {n: (out / n / "report.json").read_bytes() for n, r in first.items() if r["status"] == "done"}
    # A killed run leaves only complete capture folders (and maybe a hidden staging folder).
    for child in out.iterdir():
        if child.is_dir() and not child.name.startswith("."):
            assert child.name in done_before, child
    again = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    records = read_manifest(out)
    assert sorted(records) == ["s0", "s1", "s2", "s3"]
    for name, report in done_before.items():
        assert records[name]["status"] == "skipped" and (out / name / "report.json").read_bytes() == report
    assert {r["status"] for n, r in records.items() if n not in done_before} == {"done"}
    assert staging_left(out) == []
    for name in records:
        assert all((out / name / f).is_file() for f in COMPLETE_FILES)


def comparable(record: dict) -> dict:
    """What must agree between backends (times, hosts and peaks may not)."""
    keys = ("name", "status", "left", "right", "out", "settings", "threads", "transfer", "size_hw", "warnings", "error")
    return {k: record[k] for k in keys}


def same_outputs(a: Path, b: Path) -> None:
    for name in ("allinfocus.png", "defocus.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), (a, name)
    with np.load(a / "scene" / "scene.npz") as x, np.load(b / "scene" / "scene.npz") as y:
        for key in ("weights", "latent", "defocus", "allinfocus"):
            np.testing.assert_array_equal(x[key], y[key])


@pytest.mark.slow
def test_ray_backend_on_a_local_instance_matches_the_local_backend(tmp_path):
    import ray  # CI installs the `cluster` extra (tools/test.sh); without it this test fails here, on purpose

    inputs = synth_captures(tmp_path / "in")
    local, remote = tmp_path / "local", tmp_path / "ray"
    result = run("batch", inputs, "-o", local, *FIT, "--threads", 1)
    assert result.exit_code == 0, result.output
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        result = run("batch", inputs, "-o", remote, *FIT, "--threads", 1, "--backend", "ray")
        assert result.exit_code == 0, result.output
        assert ray.is_initialized()  # batch used the running instance and left it running
    finally:
        ray.shutdown()
    a, b = read_manifest(local), read_manifest(remote)
    assert sorted(a) == sorted(b) == ["s0", "s1", "s2"]
    for name in a:
        assert comparable(a[name]) == comparable(b[name])
        assert a[name]["backend"] == "local" and b[name]["backend"] == "ray"
        assert b[name]["worker"]["pid"] != os.getpid()  # it really ran in a Ray worker
        same_outputs(local / name, remote / name)
    assert (remote / "index.html").is_file() and staging_left(remote) == []


@pytest.mark.slow
def test_jobs_run_in_parallel_processes_with_the_same_results(tmp_path):
    inputs = synth_captures(tmp_path / "in")
    serial, parallel = tmp_path / "j1", tmp_path / "j2"
    assert run("batch", inputs, "-o", serial, *FIT, "--threads", 1).exit_code == 0
    result = run("batch", inputs, "-o", parallel, *FIT, "--jobs", 2, "--threads", 1)
    assert result.exit_code == 0, result.output
    a, b = read_manifest(serial), read_manifest(parallel)
    workers = {r["worker"]["pid"] for r in b.values()}
    assert os.getpid() not in workers and all(r["threads"] == 1 for r in b.values())
    for name in a:
        assert comparable(a[name]) == comparable(b[name])
        same_outputs(serial / name, parallel / name)


def test_the_batch_lines_come_from_the_library(tmp_path):
    from edgedp.run import BatchConfig, BatchResult, batch_captures, grouped_warnings, status_counts, summary_line
    from edgedp.errors import InputError

    records = [{"name": n, "status": s, "warnings": w} for n, s, w in
               (("a", "done", ["8-bit"]), ("b", "failed", ["8-bit", "dark"]), ("c", "skipped", None))]
    assert grouped_warnings(records) == ["8-bit (a, b)", "b: dark"]
    assert status_counts(records) == {"done": 1, "failed": 1, "skipped": 1}
    line = summary_line(BatchResult(records, 30.0), BatchConfig(out=tmp_path, jobs=2))
    assert line.startswith("batch    1 done, 1 failed, 1 skipped in 30.0 s, 2.00 captures/min (local, 2 job(s)); wrote ")
    assert line.endswith(f"{tmp_path / MANIFEST_NAME}, {tmp_path / 'index.html'}")
    with pytest.raises(InputError, match="missing -o/--out"):
        batch_captures(["x"], None)
    with pytest.raises(InputError, match="no captures given"):
        batch_captures([], tmp_path)
