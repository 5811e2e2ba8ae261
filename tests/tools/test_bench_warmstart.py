"""tools/bench_warmstart.py: the leave-one-out commands it runs and the issue's targets it checks
(fake runs; the real benchmark runs for minutes and is reported in the README)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from edgedp.eval import pixel4
from edgedp.metrics import ProtocolScores, Scores
from tests.tools.test_bench_pixel import CROP, data  # noqa: F401  (data: the fake Pixel 4 folder fixture)

REPO = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("bench_warmstart", REPO / "tools" / "bench_warmstart.py")
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_warmstart"] = bench
spec.loader.exec_module(bench)


def _scores(psnr: float) -> ProtocolScores:
    s = Scores(psnr, 0.9, 0.01, (0, 0))
    return ProtocolScores(registered=s, raw=s)


def _row(scene, cold, warm, instant, inp, cold_s, warm_s, instant_s):
    runs = {
        "tune": bench.Run("tune", 100.0, 1.0),
        "cold": bench.Run("cold", cold_s, 1.0, _scores(cold)),
        "warm": bench.Run("warm", warm_s, 1.0, _scores(warm)),
        "instant": bench.Run("instant", instant_s, 0.5, _scores(instant)),
    }
    return {"scene": scene, "input": _scores(inp), "runs": runs}


def test_targets_pass_and_fail_per_scene():
    good = _row("001", 30.0, 29.95, 29.5, 28.7, 45.0, 14.0, 2.0)
    checks = bench.targets([good])
    assert [ok for _, ok, _ in checks] == [True, True, True, True]
    # each target fails on its own: warm 0.2 dB short, warm too slow, instant below input, instant too slow
    for bad, failing in (
        (_row("004", 30.0, 29.8, 29.5, 28.7, 45.0, 14.0, 2.0), 0),
        (_row("004", 30.0, 30.0, 29.5, 28.7, 45.0, 15.1, 2.0), 1),
        (_row("004", 30.0, 30.0, 28.6, 28.7, 45.0, 14.0, 2.0), 2),
        (_row("004", 30.0, 30.0, 29.5, 28.7, 45.0, 14.0, 10.5), 3),
    ):
        checks = bench.targets([good, bad])
        assert [i for i, (_, ok, _) in enumerate(checks) if not ok] == [failing]
        assert "004" in checks[failing][2]
    text = bench.table([good])
    assert "| 001 | 30.000 | 29.950 | 29.500 | 28.700 |" in text and "| 0.31 |" in text


def test_commands_leave_the_scene_out_of_tuning(tmp_path):
    scenes = [pixel4.Scene(n, tmp_path / f"{n}_left.png", tmp_path / f"{n}_right.png", tmp_path / f"{n}_gt.png")
              for n in ("001", "004", "007")]
    cmds = bench.commands(Path("edgedp"), scenes[0], scenes[1:], tmp_path, tmp_path / "out", "default", "fast", (1008, 1344))
    tune = " ".join(cmds["tune"])
    assert "001_left" not in tune and "004_left.png," in tune and "007_left.png," in tune
    assert cmds["cold"][:2] == ["edgedp", "fit"] and "--profile" not in cmds["cold"]
    assert cmds["warm"][cmds["warm"].index("--profile") + 1] == str(tmp_path / "out" / "PHONE.profile")
    assert cmds["export"][:3] == ["edgedp", "export", str(tmp_path / "out" / "PHONE.profile")]
    assert cmds["instant"][1:4] == ["-m", "edgedp_runtime", "instant"]
    for name in ("tune", "cold", "warm", "instant"):  # the protocol's input settings everywhere
        assert "--flat-field" in cmds[name] and "1008x1344" in cmds[name] and "1024" in cmds[name]


def test_main_runs_every_step_and_scores_the_images(data, tmp_path, monkeypatch, capsys):
    """The leave-one-out loop end to end on two fake 64x80 scenes, with the steps' subprocesses
    replaced by a stand-in that writes an image per step (cold: the input, warm: the ground truth,
    instant: the input darkened): every step runs in order for each left-out scene, the images
    are scored with the protocol, and the table, the targets and the JSON say so."""
    import json

    from edgedp.eval import runs
    from edgedp.io import read_normalized, write_png16

    root = data
    steps = []

    def fake_step(name, command, out, quiet):
        steps.append((out.name, name))
        scene = out.name
        image = {"cold": "cold", "warm": "warm", "instant": "instant"}.get(name)
        if image is not None:
            gt = read_normalized(root / "gt_all_in_focus" / f"{scene}_gt.png")
            picture = {"cold": 0.9 * gt + 0.05, "warm": gt, "instant": 0.8 * gt}[name]
            (out / image).mkdir(parents=True, exist_ok=True)
            write_png16(out / image / "allinfocus.png", picture, overwrite=True)
        return runs.FitRun(list(command), 0, {"cold": 30.0, "warm": 6.0}.get(name, 1.0), 2**30, out / "log")

    monkeypatch.setattr(bench.runs, "run_step", fake_step)
    code = bench.main(["--data", str(root), "--crop", f"{CROP[0]}x{CROP[1]}", "--out", str(tmp_path / "bench"), "--quiet"])
    assert code == 0
    assert steps == [(s, step) for s in ("001", "002") for step in ("tune", "cold", "warm", "export", "instant")]
    payload = json.loads((tmp_path / "bench" / "bench_warmstart.json").read_text())
    assert [r["scene"] for r in payload["scenes"]] == ["001", "002"]
    for row in payload["scenes"]:
        assert row["warm"]["psnr"] > row["cold"]["psnr"] > row["instant"]["psnr"]
        assert row["warm"]["wall_s"] / row["cold"]["wall_s"] == 0.2
    verdicts = {t["name"].split(" ")[0] + " " + t["name"].split(" ")[1]: t["passed"] for t in payload["targets"]}
    assert verdicts["warm PSNR"] and verdicts["warm wall"]
    out = capsys.readouterr().out
    assert "| 001 |" in out and "| 002 |" in out
