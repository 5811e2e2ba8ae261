"""The focus-side vocabulary, defined once (CONVENTIONS.md, "Sign conventions").

A blur radius ``r`` (px) is signed: ``r > 0`` behind the focal plane (what the thesis calls
"front focus": the camera focused in front of the content), ``r < 0`` in front of it (the
thesis' "back focus"), ``r = 0`` in focus.  Every module, the CLI text and the JSON files use
these names, never "front"/"back", whose meaning the thesis and the old code used both ways.

=================  ==================  ==================================================
name               sign of ``r``       meaning
=================  ==================  ==================================================
``behind``         ``r > 0``           blur behind the focal plane (thesis: front focus)
``in_front``       ``r < 0``           blur in front of the focal plane (thesis: back focus)
``both``           ``r < 0``, ``r > 0``  both sides of the focal plane
``in_focus``       ``r = 0``           no measurable blur
``unknown``        (none)              no texture to measure a disparity on
``auto``           (decided)           fit focus only: decided from the DP disparity
=================  ==================  ==================================================

Two sets of values use them:

* a **side** (:data:`SIDES`, what :func:`edgedp.physics.disparity.decide_side` measures): ``behind``,
  ``in_front``, ``both``, ``in_focus``, ``unknown``;
* a **fit focus** (:data:`FIT_FOCI`, the layer range of a fit, a synthetic scene or a device
  profile): ``auto``, ``behind`` (radii ``0..R``) or ``both`` (radii ``-R..R``).  A scene whose
  blur lies only in front of the focal plane is fitted with ``both`` (there is no in-front-only
  layer pyramid).

Old names are still read (bundles, profiles, CLI values written before this vocabulary): a fit
focus ``front`` meant ``behind`` (``r > 0``); a side ``front`` meant ``in_front`` (``r < 0``) and
``in-focus`` meant ``in_focus``.

>>> fit_focus("front")
'behind'
>>> radius_signs(BOTH)
(-1, 1)
>>> focus_for_side(IN_FRONT)
'both'
"""

from __future__ import annotations

from typing import Callable

#: ``r > 0``: blur behind the focal plane (the thesis' "front focus").
BEHIND = "behind"
#: ``r < 0``: blur in front of the focal plane (the thesis' "back focus").
IN_FRONT = "in_front"
#: Blur on both sides of the focal plane (``r`` of either sign).
BOTH = "both"
#: ``r = 0`` everywhere: no measurable blur.
IN_FOCUS = "in_focus"
#: No disparity could be measured (textureless image).
UNKNOWN = "unknown"
#: Fit focus decided from the DP disparity.
AUTO = "auto"

#: The sides a disparity measurement reports (:func:`edgedp.physics.disparity.decide_side`).
SIDES = (BEHIND, IN_FRONT, BOTH, IN_FOCUS, UNKNOWN)
#: The layer ranges of a fit (``auto`` only as a request, never as what a fit used).
FIT_FOCI = (AUTO, BEHIND, BOTH)

#: Each public value -> the signs of blur radius it stands for (empty: none known / decided later).
RADIUS_SIGNS: dict[str, tuple[int, ...]] = {
    BEHIND: (1,),
    IN_FRONT: (-1,),
    BOTH: (-1, 1),
    IN_FOCUS: (0,),
    UNKNOWN: (),
    AUTO: (),
}

#: Old fit-focus names -> current ones ("front" was the thesis' front focus: r > 0).
OLD_FIT_FOCI = {"front": BEHIND}
#: Old side names -> current ones (decide_side's "front" was in front of the focal plane: r < 0).
OLD_SIDES = {"front": IN_FRONT, "in-focus": IN_FOCUS}


def radius_signs(name: str) -> tuple[int, ...]:
    """The signs of blur radius ``name`` stands for (``-1``, ``0``, ``1``), ordered.

    >>> radius_signs("behind"), radius_signs("in_front"), radius_signs("in_focus")
    ((1,), (-1,), (0,))
    """
    if name not in RADIUS_SIGNS:
        raise ValueError(f"unknown focus side {name!r} (expected one of {', '.join(RADIUS_SIGNS)})")
    return RADIUS_SIGNS[name]


def fit_focus(value: str, *, warn: Callable[[str], None] | None = None, what: str = "focus") -> str:
    """A fit focus in the current vocabulary: ``auto``, ``behind`` or ``both``.

    An old name (``front``, meaning ``behind``) is mapped; ``warn`` (if given) gets one line
    saying so.  ValueError for anything else, naming ``what``.

    >>> fit_focus("both")
    'both'
    >>> fit_focus("front", warn=print, what="--focus")
    --focus front is the old name of behind (blur behind the focal plane, r > 0); use --focus behind
    'behind'
    """
    text = str(value).strip().lower()
    if text in OLD_FIT_FOCI:
        new = OLD_FIT_FOCI[text]
        if warn is not None:
            warn(f"{what} {text} is the old name of {new} (blur behind the focal plane, r > 0); use {what} {new}")
        return new
    if text not in FIT_FOCI:
        raise ValueError(f"{what} {value!r}: expected one of {', '.join(FIT_FOCI)}")
    return text


def side_name(value: str) -> str:
    """A measured side in the current vocabulary (old ``front`` -> ``in_front``, ``in-focus`` ->
    ``in_focus``); ValueError for an unknown name.

    >>> side_name("front"), side_name("behind")
    ('in_front', 'behind')
    """
    text = str(value).strip().lower()
    text = OLD_SIDES.get(text, text)
    if text not in SIDES:
        raise ValueError(f"unknown focus side {value!r} (expected one of {', '.join(SIDES)})")
    return text


def focus_for_side(side: str) -> str:
    """The fit focus ``auto`` picks for a measured side: ``both`` when blur lies in front of the
    focal plane (alone or with blur behind it), else ``behind``.

    >>> [focus_for_side(s) for s in SIDES]
    ['behind', 'both', 'both', 'behind', 'behind']
    """
    return BOTH if side_name(side) in (BOTH, IN_FRONT) else BEHIND


def side_text(side: str) -> str:
    """One phrase describing a measured side, for ``edgedp info``.

    >>> side_text("behind")
    "behind the focal plane dominates (r > 0, positive disparity; thesis 'front focus')"
    """
    return {
        BEHIND: "behind the focal plane dominates (r > 0, positive disparity; thesis 'front focus')",
        IN_FRONT: "in front of the focal plane dominates (r < 0, negative disparity; thesis 'back focus')",
        BOTH: "both sides of the focal plane (r < 0 and r > 0)",
        IN_FOCUS: "in focus (no measurable disparity)",
        UNKNOWN: "unknown (too little texture to measure a disparity)",
    }.get(side, side)
