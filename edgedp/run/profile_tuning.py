"""``edgedp tune`` end to end: captures in, a device profile out (what the CLI command runs).

:func:`tune_from_captures` finds the captures (:func:`edgedp.io.discovery.find_captures`, the
discovery of fit, tune and batch), reads them with one set of input options, tunes the device
(:func:`edgedp.fit.device_tuning.tune_device`), makes the profile of it with the input settings it was tuned with
(:func:`device_profile`) and writes it
(refusing an existing file unless ``overwrite``, and an unwritable folder before any work).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..errors import InputError, OutputError

__all__ = ["TuneRun", "check_profile_target", "device_profile", "tune_from_captures"]


@dataclass
class TuneRun:
    """What :func:`tune_from_captures` did.

    Attributes:
        profile: the written :class:`edgedp.formats.profile.DeviceProfile`.
        scores: the kernel search's ranked scores (empty without ``search``).
        pairs: the (left, right) paths of the captures, in the profile's order.
        memory: the tile plan's report (:meth:`edgedp.fit.tiling.TilePlan.report`).
        warnings: each condition once (discovery, reading), in order.
    """

    profile: object
    scores: list
    pairs: list[tuple[Path, Path]]
    memory: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def check_profile_target(out: Path, overwrite: bool) -> None:
    """Refuse, before minutes of tuning, a profile path that is a folder, exists (without ``overwrite``) or
    whose folder does not exist or is not writable (one-line OutputError)."""
    out = Path(out)
    if out.is_dir():  # --overwrite replaces a profile file, never a folder
        raise OutputError(f"{out} is a folder, not a profile file (give a file name, e.g. {out / 'phone.profile'})")
    if out.exists() and not overwrite:
        raise OutputError(f"{out} exists (use --overwrite)")
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise OutputError(f"cannot write the profile {out}: folder {folder} does not exist or is not writable")


def device_profile(tuned, read_options=None, kernel_field=None):
    """The :class:`edgedp.formats.profile.DeviceProfile` of a tuned device
    (:class:`edgedp.fit.device_tuning.TunedDevice`): its fields and the input settings of ``read_options`` (an
    :class:`edgedp.io.images.ReadOptions`; None: the defaults of ``edgedp fit``).  ``kernel_field``
    (given, ``--kernels``): stored as it is, instead of the tuned field and its evidence."""
    from ..formats.profile import DeviceProfile

    profile = DeviceProfile(**{f.name: getattr(tuned, f.name) for f in dataclasses.fields(tuned) if f.name != "scores"})
    if read_options is not None:
        profile = dataclasses.replace(
            profile,
            black_level=read_options.black_level,
            white_level=read_options.white_level,
            flat_field=None if read_options.flat_field is None else tuple(str(p) for p in read_options.flat_field),
        )
    if kernel_field is not None:
        profile = dataclasses.replace(profile, kernel_field=kernel_field, field_evidence=None)
    return profile


def tune_from_captures(
    captures: Sequence[str],
    out: Path,
    config,
    read_options,
    *,
    name: str = "device",
    search: bool = False,
    rounds: int = 1,
    budget=None,
    overwrite: bool = False,
    progress: Callable | None = None,
    warn: Callable[[list[str]], None] | None = None,
    kernel_field=None,
) -> TuneRun:
    """Tune and write the profile ``out`` from ``captures`` (specs as for ``edgedp batch``).

    ``config``: the FitConfig of the G_D fits (stage 3 is turned off); ``read_options``: the
    :class:`edgedp.io.images.ReadOptions` every capture is read with (stored in the profile);
    ``warn(messages)`` is called with the discovery's and then the reading's warnings as they
    arise (each condition once).  Errors are one-line InputError / OutputError.  ``kernel_field``
    (:class:`edgedp.physics.kernel_field.KernelField`): stored in the profile as given, instead of
    the field tune estimates from the captures (the G_D fits here use the parametric kernels).
    """
    from ..fit.device_tuning import tune_device
    from ..formats.profile import save_profile
    from ..io.discovery import find_captures
    from ..io.images import read_dp_pair

    if rounds < 1:
        raise InputError(f"--rounds {rounds}: must be >= 1")
    check_profile_target(out, overwrite)
    config = dataclasses.replace(config, stage3_iterations=0)
    emit = warn or (lambda messages: None)
    found, notes = find_captures(list(captures))
    notes = list(dict.fromkeys(notes))
    emit(notes)
    pairs = [(c.left, c.right) for c in found]
    data, messages = [], []
    for left, right in pairs:
        pair = read_dp_pair(left, right, read_options)
        messages.extend(pair.info.warnings)
        data.append((pair.left, pair.right))
    messages = list(dict.fromkeys(messages))  # a condition shared by several captures (8-bit input) once
    emit(messages)
    memory: dict = {}
    tuned = tune_device(data, config, device_name=name, paths=[f"{l},{r}" for l, r in pairs],
                        search=search, rounds=rounds, progress=progress, budget=budget, plan_report=memory)
    profile = device_profile(tuned, read_options, kernel_field)
    save_profile(profile, out, overwrite=overwrite)
    return TuneRun(profile=profile, scores=list(tuned.scores), pairs=pairs, memory=memory, warnings=notes + messages)
