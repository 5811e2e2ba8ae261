"""``edgedp tune``: a device profile from several captures of one phone (:func:`edgedp.fit.device_tuning.tune_device`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..fit.options import MIN_FIT_SIZE, camera_read_options, fit_config_from_options
from .app import app, user_errors
from .options import FitFocusChoice, KernelsOpt, MaxMemoryOpt, PatchesOpt, PresetChoice, focus_option, with_input_options
from .output import FitProgress, echo_warnings, memory_line, short_number


@app.command()
@user_errors
@with_input_options(after="name")
def tune(
    captures: Annotated[
        list[str],
        typer.Argument(help="Captures of one device: LEFT,RIGHT pairs, view files, folders of pairs or .txt lists "
                            "(as for edgedp batch).", show_default=False),
    ],
    out: Annotated[Path, typer.Option("-o", "--out", help="Profile file to write (e.g. PHONE.profile).", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="Device name stored in the profile.")] = "device",
    preset: Annotated[PresetChoice, typer.Option(
        help="Speed/quality preset for the G_D fits (default: 60 Stage 2 steps per capture, the step count the "
             "warm-start benchmark was measured with).")] = PresetChoice.default,
    iterations: Annotated[Optional[str], typer.Option(help="Stage 2 steps per capture (S2). Default: the preset's.")] = None,
    focus: Annotated[Optional[FitFocusChoice], typer.Option(help="auto (default), behind or both (front: old name of behind).",
                                                            show_default=False)] = None,
    rounds: Annotated[int, typer.Option(help="Passes of the G_D fit over the captures.")] = 1,
    search: Annotated[
        bool,
        typer.Option(help="Also search the Butterworth kernel shape and radius per disparity (off by default: on real "
                          "captures it is not identifiable from DP pairs alone, see README).")
    ] = False,
    max_memory: MaxMemoryOpt = None,
    kernels: KernelsOpt = None,
    patches: PatchesOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing profile.")] = False,
    *,
    inputs: dict,
) -> None:
    """Tune a device profile from several DP captures of one phone (no calibration target).

    Learns, from the DP views alone: the left/right gain over the frame (DP vignetting, no
    white sheet needed), one G_D fitted on all captures, and with --search the Butterworth kernel
    shape (order, cut-off, floor beta) and blur radius per disparity that best explain both views
    of every capture; writes them with the input settings into one profile file (see
    edgedp.formats.profile). `edgedp fit --profile` then starts from it, and `edgedp export PHONE.profile`
    makes the instant on-device predictor.

    Examples:

      edgedp tune a_left.png,a_right.png b_left.png,b_right.png -o PHONE.profile --name pixel4

      edgedp tune captures/ -o PHONE.profile --camera pixel4

      edgedp tune captures/ -o PHONE.profile --kernels blur_kernels_left.npy blur_kernels_right.npy

    With --kernels the profile also stores that kernel field (grid from --patches) and `edgedp fit
    --profile` fits with it; the G_D fits of tune itself use the parametric kernels.
    """
    from ..run.capture import memory_budget_of, parse_max_memory
    from ..run.profile_tuning import check_profile_target, tune_from_captures

    check_profile_target(out, overwrite)  # before reading anything
    focus_option(focus)  # one warning line for an old name (FitConfig maps it)
    budget = memory_budget_of(parse_max_memory(max_memory))  # the one budget of the G_D fits
    config = fit_config_from_options(preset.value, iterations=iterations, focus=focus.value if focus is not None else None,
                                     patches=patches)
    kernel_field = None
    if kernels is not None and all(p is not None for p in kernels):
        from ..formats.kernel_grid import load_kernel_grid

        kernel_field = load_kernel_grid(kernels[0], kernels[1], config.patches)
    options = camera_read_options(**inputs, min_size=MIN_FIT_SIZE)
    with FitProgress() as progress:
        run = tune_from_captures(captures, out, config, options, name=name, search=search, rounds=rounds, budget=budget,
                                 overwrite=overwrite, progress=progress, warn=echo_warnings, kernel_field=kernel_field)
    profile, scores, pairs = run.profile, run.scores, run.pairs
    typer.echo(f"{'capture':<40} {'size':>11} {'disparity px':>15} {'G_D s':>7} {'loss':>9}")
    for (left_path, _), c in zip(pairs, profile.captures):
        typer.echo(f"{left_path.name[-40:]:<40} {c.height:>5}x{c.width:<5} {c.disparity_low:+6.2f}..{c.disparity_high:+6.2f} "
                   f"{(c.seconds or 0):7.2f} {short_number(c.loss):>9}")
    b = profile.butterworth
    searched = "searched" if search else "default shape; --search to tune it"
    typer.echo(f"kernel   {profile.kernel_model} order {b.order:g} cutoff {b.cutoff:g} beta {b.beta:g}, "
               f"radius scale {profile.radius_scale:g} ({searched})")
    if search:
        for k in scores[:3]:
            typer.echo(f"         order {k.params.order:g} cutoff {k.params.cutoff:g} beta {k.params.beta:g}: score {k.score:.4f}")
    if profile.view_gain is not None:
        from ..physics.view_gain import view_gain_map

        g = view_gain_map(profile.view_gain, profile.height, profile.width)
        typer.echo(f"gain     right view x {float(g.min()):.3f} .. {float(g.max()):.3f} over the frame "
                   f"(centre {profile.asymmetry:.3f}; measured after the flat field given, if any)")
    if profile.kernel_field is not None:
        pr, pc = profile.kernel_field.grid
        typer.echo(f"field    {pr}x{pc} from {profile.kernel_field.source} (recentred), K {profile.kernel_field.size}: stored")
    typer.echo(f"layers   {profile.layers} ({profile.focus}), radius {min(profile.radii):+.1f} .. {max(profile.radii):+.1f} px")
    typer.echo(f"memory   {memory_line(run.memory)}")
    typer.echo(f"wrote    {out}")
