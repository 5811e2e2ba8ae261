"""Pairing and discovery of DP captures: a view file's partner by name (``find_pair``, ``view_pair``), and
the captures of folders, ``LEFT,RIGHT`` specs and ``.txt`` lists (``find_captures``: the one discovery of
``edgedp fit``, ``tune`` and ``batch``), with names for their outputs (``capture_names``).
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .images import IMAGE_EXTENSIONS, input_error


__all__ = ["Capture", "find_captures", "find_pair"]


#: How a file name says which view it is: (left, right) tags at the end of the stem, compared
#: case-insensitively; the partner's name keeps the case style (``X_L`` <-> ``X_R``,
#: ``X_Left`` <-> ``X_Right``).  Bare ``left`` / ``right`` stems (``edgedp synth``) also count.
VIEW_NAME_SUFFIXES = (("_left", "_right"), ("_l", "_r"))

#: How a folder says which view its files are: (left, right) tags at the end of a parent or
#: grandparent folder's name.  ``_l`` / ``_r``: DPDD (``test_l/source/X.png`` <->
#: ``test_r/source/X.png``); ``left_pd`` / ``right_pd``: Google's 2019 dual-pixel dataset
#: (``raw_left_pd/<id>/result_pd_left_center.png`` <-> ``raw_right_pd/<id>/result_pd_right_center.png``;
#: the ``pd_left`` / ``pd_right`` token of the file name is swapped along).
VIEW_FOLDER_SUFFIXES = (("_l", "_r"), ("left_pd", "right_pd"))

#: View tokens inside a file name that swap along with a folder tag (Google 2019 layout).
VIEW_FILE_TOKENS = (("pd_left", "pd_right"),)


def _swap_case(found: str, other: str) -> str:
    """``other`` in the case style of ``found``: L -> R, Left -> Right, left -> right."""
    letters = found.lstrip("_")
    if letters.isupper():
        return other.upper()
    if letters[:1].isupper():
        head = other[: len(other) - len(other.lstrip("_"))]
        body = other.lstrip("_")
        return head + body[:1].upper() + body[1:]
    return other


def _ends_with_tag(text: str, tag: str) -> bool:
    """``text`` ends in ``tag`` (case-insensitive); a ``_``-tag needs something before it."""
    return text.lower().endswith(tag) and len(text) > len(tag) - (0 if tag.startswith("_") else 1)


def _partner_name(stem: str, suffix: str) -> tuple[str, str] | None:
    """For a stem naming a view, return (left_name, right_name) keeping its case.

    ``X_L``/``X_R``, ``X_left``/``X_right`` (:data:`VIEW_NAME_SUFFIXES`) and bare
    ``left``/``right`` (``edgedp synth`` output).
    """
    lower = stem.lower()
    for left_tag, right_tag in VIEW_NAME_SUFFIXES + (("left", "right"),):
        for tag, other in ((left_tag, right_tag), (right_tag, left_tag)):
            bare = not tag.startswith("_")
            if (lower == tag) if bare else _ends_with_tag(stem, tag):
                found = stem[len(stem) - len(tag):]
                base = stem[: len(stem) - len(tag)]
                names = (base + found + suffix, base + _swap_case(found, other) + suffix)
                return names if tag == left_tag else (names[1], names[0])
    return None


def _swap_file_token(name: str, side: str) -> str | None:
    """The partner's file name for a folder-tagged view: its ``pd_left`` / ``pd_right`` token
    (:data:`VIEW_FILE_TOKENS`) swapped; unchanged without one; None when the name carries the
    other side's token (a mislabelled file)."""
    lower = name.lower()
    for left_token, right_token in VIEW_FILE_TOKENS:
        own, other = (left_token, right_token) if side == "left" else (right_token, left_token)
        if other in lower:
            return None
        at = lower.find(own)
        if at >= 0:
            return name[:at] + _swap_case(name[at : at + len(own)], other) + name[at + len(own):]
    return name


def _partner_folder(path: Path) -> tuple[Path, Path] | None:
    """Folder layouts (:data:`VIEW_FOLDER_SUFFIXES`): DPDD ``test_l/source/X.png`` <->
    ``test_r/source/X.png``; Google 2019 ``raw_left_pd/<id>/result_pd_left_center.png`` <->
    ``raw_right_pd/<id>/result_pd_right_center.png``.  Only the parent and grandparent folders
    are looked at."""
    parts = path.parts
    for index in range(len(parts) - 2, max(len(parts) - 4, -1), -1):
        part = parts[index]
        for left_tag, right_tag in VIEW_FOLDER_SUFFIXES:
            for tag, other, side in ((left_tag, right_tag, "left"), (right_tag, left_tag, "right")):
                if not _ends_with_tag(part, tag):
                    continue
                swapped = part[: -len(tag)] + _swap_case(part[-len(tag):], other)
                name = _swap_file_token(parts[-1], side)
                if name is None:
                    return None
                partner = Path(*parts[:index], swapped, *parts[index + 1 : -1], name)
                return (path, partner) if side == "left" else (partner, path)
    return None


def _npz_holds_pair(path: Path) -> bool:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "left" in npz.files and "right" in npz.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise input_error(f"cannot read DP view {path}: {err}") from err


def view_pair(path: Path | str) -> tuple[Path, Path] | None:
    """The ``(left, right)`` paths that ``path``'s name or folders make it part of, without
    looking at the disk (None when they do not say which view it is)."""
    path = Path(path)
    # A pd_left / pd_right token names the view before any suffix does: Google's rig positions
    # give names like result_pd_left_left.png (left DP view of the left phone).
    if _file_token(path.stem) is not None:
        pair = _partner_folder(path)
        if pair is not None:
            return pair
    names = _partner_name(path.stem, path.suffix)
    if names is not None:
        return path.with_name(names[0]), path.with_name(names[1])
    return _partner_folder(path)


def _file_token(stem: str) -> str | None:
    lower = stem.lower()
    return next((t for pair in VIEW_FILE_TOKENS for t in pair if t in lower), None)


def find_pair(path: Path | str) -> tuple[Path, Path]:
    """Given one view, return ``(left, right)`` paths of its DP pair.

    Recognized names (case kept): ``X_L.ext`` / ``X_R.ext`` (DPDD style), ``X_left.ext`` /
    ``X_right.ext`` (also the Google capture app's ``X_left.pgm`` / ``X_right.pgm``),
    ``left.ext`` / ``right.ext`` (``edgedp synth`` output); else the folder layouts of DPDD
    (``<split>_l/source/X.ext`` / ``<split>_r/source/X.ext``) and of Google's 2019 dual-pixel
    dataset (``raw_left_pd/<id>/result_pd_left_<pos>.png`` / ``raw_right_pd/...``).  An
    ``.npz`` holding arrays ``left`` and ``right`` is its own partner: ``(path, path)``.

    Raises:
        InputError: the file does not exist, the name does not say which view it is, or the
            partner is missing.

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for name in ('001_left.png', '001_right.png'): _ = (folder / name).write_bytes(b'')
        >>> [p.name for p in find_pair(folder / '001_left.png')]
        ['001_left.png', '001_right.png']
    """
    path = Path(path)
    if not path.is_file():
        state = "is not a file" if path.exists() else "does not exist"
        raise input_error(f"DP view {path} {state}")
    if path.suffix.lower() == ".npz" and _npz_holds_pair(path):
        return path, path
    pair = view_pair(path)
    if pair is None:
        raise input_error(
            f"cannot tell which DP view {path} is: expected a name ending in _L/_R or "
            "_left/_right, a <split>_l/<split>_r or left_pd/right_pd folder (or an .npz with "
            "arrays 'left' and 'right')"
        )
    for view, side in zip(pair, ("left", "right")):
        if not view.is_file():
            raise input_error(f"the {side} view {view} for {path} is missing")
    return pair


@dataclass(frozen=True)
class Capture:
    """One DP capture to fit: a name (unique among the captures found together, usable as a
    folder name) and its two views (the same ``.npz`` twice for a pair stored in one file)."""

    name: str
    left: Path
    right: Path


#: Text files that list captures (one spec a line) for :func:`find_captures`.
LIST_EXTENSIONS = (".txt", ".lst")

#: Folder names that say nothing about a capture (left out of its name).
_GENERIC_FOLDERS = frozenset({"source", "", "."})


def find_captures(specs: Sequence[str | Path]) -> tuple[list[Capture], list[str]]:
    """Every DP capture that ``specs`` name, in order, each once: ``(captures, warnings)``.

    A spec is ``LEFT,RIGHT`` (two files; not checked here, reading them is), one view file
    (:func:`find_pair`), a folder (searched recursively, hidden folders skipped: every file
    that :func:`find_pair` recognizes as a left view with its partner present; the layouts are
    ``*_left``/``*_right`` and ``*_L``/``*_R`` files, ``left``/``right`` (``edgedp synth``),
    DPDD's ``<split>_l/source`` + ``<split>_r/source``, Google's capture app
    ``*_left.pgm``/``*_right.pgm`` and 2019 dataset ``raw_left_pd/`` + ``raw_right_pd/``), or
    a ``.txt`` file listing specs one a line (``#`` comments; relative paths are relative to
    the list's folder).  A view without its partner in a folder is skipped with a warning.

    Names (:func:`capture_names`): the left file's stem without its view tag, prefixed with
    parent folders only where that is needed to tell captures apart.

    Raises:
        InputError: a spec that is none of these, or no capture at all.
    """
    pairs: list[tuple[Path, Path]] = []
    notes: list[str] = []
    for spec in specs:
        _expand_spec(str(spec), None, pairs, notes, depth=0)
    # One capture once, however it was named: `good/a/left.png` and its absolute path (or a
    # symlink to it) are the same files, so pairs are compared by their resolved paths; the
    # first spelling given is kept.
    first: dict[tuple[Path, Path], tuple[Path, Path]] = {}
    for pair in pairs:
        first.setdefault((_resolved(pair[0]), _resolved(pair[1])), pair)
    unique = list(first.values())
    if not unique:
        shown = ", ".join(str(s) for s in specs) or "(nothing given)"
        raise input_error(
            f"no DP captures found in {shown}: expected LEFT,RIGHT pairs, folders of "
            "*_left/*_right (or *_L/*_R) files, DPDD or Google dual-pixel layouts, or a .txt list"
        )
    return [Capture(n, l, r) for n, (l, r) in zip(capture_names(unique), unique)], notes


def _resolved(path: Path) -> Path:
    """``path`` absolute with symlinks and ``..`` resolved (as far as it exists)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


def _expand_spec(spec: str, base: Path | None, pairs: list, notes: list[str], depth: int) -> None:
    def resolve(text: str) -> Path:
        p = Path(text.strip()).expanduser()
        return p if base is None or p.is_absolute() else base / p

    path = resolve(spec)
    if "," in spec and not path.exists():
        left, right = (resolve(p) for p in spec.split(",", 1))
        pairs.append((left, right))
        return
    if path.is_dir():
        found = _pairs_in_folder(path, notes)
        if not found:
            raise input_error(
                f"capture folder {path}: no DP pairs (*_left/*_right or *_L/*_R files, "
                "<split>_l/<split>_r or left_pd/right_pd folders)"
            )
        pairs.extend(found)
    elif path.is_file() and path.suffix.lower() in LIST_EXTENSIONS:
        if depth >= 4:
            raise input_error(f"capture list {path}: lists nested more than 4 deep")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise input_error(f"cannot read capture list {path}: {err}") from err
        for line in lines:
            line = line.split("#", 1)[0].strip()
            if line:
                _expand_spec(line, path.parent, pairs, notes, depth + 1)
    elif path.is_file():
        pairs.append(find_pair(path))
    else:
        raise input_error(
            f"capture '{spec}': no such file or folder (give LEFT,RIGHT, a view, a folder of "
            "pairs or a .txt list of them)"
        )


def _pairs_in_folder(folder: Path, notes: list[str]) -> list[tuple[Path, Path]]:
    found: list[tuple[Path, Path]] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if path.suffix.lower() not in IMAGE_EXTENSIONS or name.startswith("."):
                continue
            if path.suffix.lower() == ".npz" and _npz_holds_pair(path):
                found.append((path, path))
                continue
            pair = view_pair(path)
            if pair is None:
                continue
            left, right = pair
            other = right if path == left else left
            if other.is_file():
                if path == left:
                    found.append(pair)
            else:
                side = "right" if path == left else "left"
                notes.append(f"{path}: no {side} view {other} beside it, skipped")
    return found


def _name_parts(left: Path) -> list[str]:
    """The words a capture's name may be built from, nearest first: the left file's stem
    without view tags, then its folders without view tags (generic ones left out)."""
    stem = left.stem
    token = _file_token(stem)
    if token is not None and _partner_folder(left) is not None:
        at = stem.lower().find(token)
        stem = stem[:at] + stem[at + len(token):]
    elif stem.lower() in ("left", "right"):
        stem = ""
    else:
        tag = next((t for pair in VIEW_NAME_SUFFIXES for t in pair if _ends_with_tag(stem, t)), None)
        if tag is not None:
            stem = stem[: -len(tag)]
    parts = [stem]
    for folder in reversed(left.parent.parts[-6:]):
        for left_tag, _ in VIEW_FOLDER_SUFFIXES:
            if _ends_with_tag(folder, left_tag):
                folder = folder[: -len(left_tag)]
                break
        parts.append(folder)
    cleaned = [_safe_name(p) for p in parts]
    return [p for p in cleaned if p and p.lower() not in _GENERIC_FOLDERS]


def _safe_name(text: str) -> str:
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    text = re.sub(r"_{2,}", "_", text)
    return text.strip("_-.")


def capture_names(pairs: Sequence[tuple[Path, Path]]) -> list[str]:
    """Unique folder names for captures: the left view's stem without its view tag (``scene``
    for ``scene_left.png``; the folder for ``left.png``), prefixed with as many parent folders
    as it takes to tell captures apart (``<id>_result_center`` in Google's layout), then
    numbered (``-2``, ``-3``) if still equal.  Deterministic for the same list."""
    parts = [_name_parts(Path(left)) or ["capture"] for left, _ in pairs]
    depth = [1] * len(parts)

    def name(i: int) -> str:
        return "_".join(reversed(parts[i][: depth[i]]))

    while True:
        groups: dict[str, list[int]] = {}
        for i in range(len(parts)):
            groups.setdefault(name(i), []).append(i)
        grew = False
        for members in groups.values():
            if len(members) > 1:
                for i in members:
                    if depth[i] < len(parts[i]):
                        depth[i] += 1
                        grew = True
        if not grew:
            break
    seen: dict[str, int] = {}
    out = []
    for i in range(len(parts)):
        base = name(i)
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return out
