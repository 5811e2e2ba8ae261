"""Runs of the library over real inputs, between the CLI and the library: one capture end to end
(``capture``: what ``edgedp fit`` runs) and many (``batch``: ``edgedp batch``, local processes or Ray); a device profile from
several captures (``profile_tuning``: ``edgedp tune``)."""

from .. import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "capture": ("FIT_OUTPUTS", "COMPLETE_FILES", "CaptureOptions", "CaptureFit", "peak_rss_bytes", "reset_peak_rss", "input_info", "transfer_line", "parse_max_memory", "memory_budget_of", "CapturePlan", "capture_budget", "capture_config", "capture_kernel_field", "kernels_line", "fit_capture", "outputs_complete",),
    "batch": ("MANIFEST_NAME", "INDEX_NAME", "STAGING_PREFIX", "REPLACED_PREFIX", "BACKENDS", "CLUSTER_EXTRA", "BatchConfig", "available_cores", "threads_per_job", "CaptureTask", "run_capture", "run_capture_remote", "read_tree", "write_tree", "Plan", "plan_batch", "commit", "Manifest", "read_manifest", "skipped_record", "ray_module", "BatchResult", "run_batch", "write_index", "summary_rows", "batch_captures", "finished_captures", "grouped_warnings", "status_counts", "summary_line",),
    "profile_tuning": ("TuneRun", "check_profile_target", "device_profile", "tune_from_captures",),
})
