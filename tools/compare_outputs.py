"""Compare two output trees of tools/reference_outputs.sh: every file under BEFORE must exist under
AFTER with the same content: ``.npy`` / ``.npz`` arrays and PNG pixels exactly (dtype, shape and
every value), JSON with timing / date / memory / path / per-run id fields left out
(:data:`IGNORED_KEYS`), ONNX graphs byte for byte without those metadata entries, text logs
``*.txt`` with the tree's own path and the timings / sizes masked (:func:`normalize_text`; skipped
with ``--skip-text``), every other file byte for byte.  Exit 0 when all match, 1 otherwise; one line
per difference.

    python tools/compare_outputs.py BEFORE AFTER [--skip-text]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

#: JSON keys whose values legitimately differ between two runs of the same command.
IGNORED_KEYS = frozenset({
    "seconds", "created", "date", "time", "elapsed", "duration", "wall_seconds", "total_seconds",
    "peak_memory", "peak_memory_bytes", "peak_rss_bytes", "peak_rss", "memory", "path", "paths",
    "out", "output", "left", "right", "flat_field", "hostname", "host", "bundle",
    "bundle_id", "scene_id",  # a random id per fit
})


def ignored(key: str) -> bool:
    """A JSON key left out of the comparison: in :data:`IGNORED_KEYS`, or a timing / memory / path key
    by its suffix (``stage2_seconds``, ``peak_bytes``, ``scene_path``).

    >>> ignored("seconds"), ignored("stage1_seconds"), ignored("peak_rss_bytes"), ignored("loss")
    (True, True, True, False)
    """
    return key in IGNORED_KEYS or key.endswith(("_seconds", "_path", "_dir", "_time")) or key.startswith("peak_")


def strip(value):
    """``value`` (parsed JSON) without the keys :func:`ignored` names, at any depth."""
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if not ignored(k)}
    if isinstance(value, list):
        return [strip(v) for v in value]
    return value


def normalize_text(text: str, root: Path) -> str:
    """A log without what differs between two runs of the same command: the output tree's path
    (``ROOT``) and timings / sizes (``N s``, ``N GiB``, ...).

    >>> normalize_text("wrote /tmp/a/x in 1.5 s, peak 0.21 GiB", Path("/tmp/a"))
    'wrote ROOT/x in N s, peak N GiB'
    """
    text = text.replace(str(root), "ROOT")
    return re.sub(r" *\d+(\.\d+)?(e[+-]?\d+)? ?(s|ms|GiB|MiB|KiB|GB|MB)\b", lambda m: f" N {m.group(3)}", text)


def onnx_bytes(path: Path) -> bytes:
    """The graph without the metadata entries :func:`ignored` names."""
    import onnx

    model = onnx.load(str(path))
    kept = [(p.key, p.value) for p in model.metadata_props if not ignored(p.key)]
    del model.metadata_props[:]
    for key, value in kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    """The arrays a file holds: ``.npy`` one, ``.npz`` each member, ``.png`` its pixels (all channels,
    any bit depth)."""
    if path.suffix == ".npy":
        return {"": np.load(path, allow_pickle=False)}
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files if not ignored(k)}
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return {"": image}


def same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    """None when equal (keys, dtypes, shapes, values with NaN == NaN), else what differs."""
    if sorted(a) != sorted(b):
        return f"members {sorted(a)} != {sorted(b)}"
    for k in a:
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return f"{k or 'array'}: {x.dtype}{x.shape} != {y.dtype}{y.shape}"
        if not np.array_equal(x, y, equal_nan=x.dtype.kind in "fc"):
            if x.dtype.kind not in "biufc":
                return f"{k or 'array'}: {x.ravel()[:3].tolist()} != {y.ravel()[:3].tolist()}"
            diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
            return f"{k or 'array'}: {int((diff > 0).sum())} values differ, max {np.nanmax(diff):.3g}"
    return None


def compare_file(before: Path, after: Path, *, skip_text: bool = False, roots: tuple[Path, Path] | None = None) -> str | None:
    """None when ``after`` matches ``before`` (module docstring), else a short reason; ``roots``:
    the two trees (masked in text logs)."""
    if not after.is_file():
        return "missing"
    suffix = before.suffix.lower()
    if suffix in (".npy", ".npz", ".png"):
        return same_arrays(arrays_of(before), arrays_of(after))
    if suffix == ".json":
        a, b = (strip(json.loads(p.read_text(encoding="utf-8"))) for p in (before, after))
        return None if a == b else "JSON differs (beyond timing, date, memory and path fields)"
    if suffix == ".onnx":
        return None if onnx_bytes(before) == onnx_bytes(after) else "ONNX graph differs (beyond per-run metadata)"
    if suffix == ".txt":
        if skip_text:
            return None
        a, b = (normalize_text(p.read_text(encoding="utf-8", errors="replace"), r)
                for p, r in zip((before, after), roots or (before.parent, after.parent)))
        return None if a == b else "text differs (beyond paths and timings)"
    return None if before.read_bytes() == after.read_bytes() else "bytes differ"


def compare_trees(before: Path, after: Path, *, skip_text: bool = False) -> list[str]:
    """One line per file of either tree that does not match (missing on one side included)."""
    lines = []
    names = {p.relative_to(before) for p in before.rglob("*") if p.is_file()}
    extra = {p.relative_to(after) for p in after.rglob("*") if p.is_file()} - names
    for rel in sorted(names):
        why = compare_file(before / rel, after / rel, skip_text=skip_text, roots=(before, after))
        if why:
            lines.append(f"{rel}: {why}")
    lines += [f"{rel}: only in {after}" for rel in sorted(extra)]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--skip-text", action="store_true", help="do not compare the *.txt logs")
    args = parser.parse_args(argv)
    lines = compare_trees(args.before, args.after, skip_text=args.skip_text)
    count = sum(1 for p in args.before.rglob("*") if p.is_file())
    for line in lines:
        print(line)
    print(f"{count} files compared: {'all identical' if not lines else f'{len(lines)} differ'}")
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
