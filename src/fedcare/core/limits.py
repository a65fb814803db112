"""Bounds on every number that crosses a process boundary or comes from a study file.

One place for them, because three layers check the same facts: the wire decoder (a site's
reply, a hub's task), :class:`~fedcare.core.messages.TrainConfig` and the study configuration
(``fedcare.config``). A number outside these bounds is refused as a
:class:`~fedcare.core.errors.ValidationError` (wire) or a
:class:`~fedcare.core.errors.ConfigError` (study file), never passed on: one site's
``num_examples = 10**400`` (a valid JSON integer) used to make the hub's ``float()`` raise
``OverflowError`` and fail the whole study (audit F1), and ``train.local_epochs = 10**9``
was accepted and trained for ever (F21).

The bounds are generous - orders of magnitude beyond any real study - so that they only ever
stop nonsense and attacks, never a legitimate configuration.
"""

from __future__ import annotations

#: Rows, examples, steps and sizes: a count is an ``int`` in ``0..MAX_COUNT`` (about 10^12,
#: more rows than any hospital or federation holds).
MAX_COUNT = 2**40
#: Round numbers: ``0..MAX_ROUND`` (a study has at most ``study.rounds`` <= 100 000 rounds,
#: plus the final evaluation round).
MAX_ROUND = 10**6
#: Seeds: ``0..MAX_SEED`` (what numpy's and torch's generators accept).
MAX_SEED = 2**63 - 1
#: Wall-clock seconds a site reports for a task: finite, ``0..MAX_SECONDS`` (about 115 days).
MAX_SECONDS = 1e7
#: A metric's absolute value (losses, accuracies, DP accounting facts): at most 1e30.
MAX_METRIC = 1e30

# -- local training (a task's ``train`` header and the study's [train] section) -------------
#: Local epochs per round.
MAX_LOCAL_EPOCHS = 10_000
#: Local mini-batch steps per round.
MAX_LOCAL_STEPS = 1_000_000
#: Mini-batch size.
MAX_BATCH_SIZE = 1_000_000
#: Learning rate (local, and a server optimizer's).
MAX_LR = 1_000.0
#: L2 weight decay.
MAX_WEIGHT_DECAY = 1_000.0
#: FedProx's proximal coefficient mu.
MAX_PROXIMAL_MU = 1_000.0
#: Optimizers a site runs.
OPTIMIZERS = ("sgd", "adam")
#: Learning-rate schedules over one round's local steps.
LR_SCHEDULES = ("constant", "cosine")
#: Training-batch augmentations of images (``flip``: left-right mirror of half the images;
#: ``shift``: translate each image by up to ``augment_shift`` pixels).
AUGMENTATIONS = ("none", "flip", "shift", "flip_shift")
#: Largest shift, in pixels, the ``shift`` augmentation may translate an image by.
MAX_AUGMENT_SHIFT = 64


def check_int(value: object, what: str, low: int, high: int) -> int:
    """``value`` as an int in ``low..high``, or :class:`ValueError` naming ``what`` and the
    range. ``bool`` is not an int here (JSON ``true`` is not a count)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{what} must be an integer in {low}..{high}, "
                         f"got {type(value).__name__}")
    if not low <= value <= high:
        shown = value if abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
        raise ValueError(f"{what} must be in {low}..{high}, got {shown}")
    return value


def check_float(value: object, what: str, low: float, high: float, *,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` (int or float, not bool) as a finite float in the range, or
    :class:`ValueError` naming ``what`` and the range. Huge ints are refused before
    ``float()`` could overflow."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    rng = f"{lo}{low:g}, {high:g}{hi}"
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{what} must be a finite number in {rng}, got {type(value).__name__}")
    # Compared before float(): Python compares an int with a float exactly, so a huge int
    # is refused (10**400 would overflow float(), 10**30 + 1 would round down to 1e30).
    below = value <= low if low_open else value < low
    above = value >= high if high_open else value > high
    if value != value or below or above:  # NaN compares false everywhere: caught by !=
        shown: object = value
        if isinstance(value, int) and abs(value) >= 10**30:
            shown = f"an integer of {len(str(abs(value)))} digits"
        raise ValueError(f"{what} must be a finite number in {rng}, got {shown!s}")
    return float(value)
