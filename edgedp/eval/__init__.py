"""Evaluation on real data, for the benchmarks in ``tools/``: the Pixel 4 protocol (``pixel4``: scenes,
protocol steps 1-2, ground truth, the input baseline, scores over scenes) and timed subprocess runs
(``runs``: wall time and peak RSS of a fit, its log, progress lines, exit statuses)."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "pixel4": ("BLACK_LEVEL", "DEFAULT_CROP", "MAX_SHIFT", "PRESETS", "WHITE_LEVEL", "Scene", "SceneResult", "Summary", "difference", "discover_scenes", "fit_command", "flat_field_frames", "input_args", "input_baseline", "mean_scores", "read_gt", "read_options", "read_output", "residual_artifacts", "scene_references", "single_channel", "summarize",),
    "runs": ("EXIT_FIT_FAILED", "EXIT_OK", "EXIT_TARGETS", "EXIT_USAGE", "GIB", "TAIL_LINES", "FitFailed", "FitRun", "exit_on_sigterm", "log_tail", "run_fit", "run_step", "say",),
})
