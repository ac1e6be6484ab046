"""``--strategy auto``'s decisions on validation evidence: pure functions on measured scores.

The advisor's table (``advisor.py``) says which fine-tune *may* pay; these functions decide from
what the candidates actually scored on the validation split (never on test):

* ``keep_challenger``: of two candidates, the one whose validation accuracy is higher by more
  than the noise of the difference (``accuracy_noise``, at least one image) is kept. Where both
  carry their per-image outcomes on the same validation images (``Score.correct``), the
  comparison is paired, as McNemar's test: only the images one gets right and the other wrong
  count, and the noise is the standard error of the paired difference. Two models of the same
  backbone get most images right together, so the paired noise is usually well below the
  independent binomials'. Without outcomes, the two accuracies count as independent binomials.
  Inside the noise the validation loss decides, when one is lower by more than ``LOSS_MARGIN``.
  Otherwise the evidence is inconclusive and the prior stands: for the advisor's fine-tune
  against the head, the advisor's choice (the rule is what the evidence checks, so it loses only
  to evidence); for a bigger backbone against a smaller one, the cheaper.
* ``choose_augment``: the crop scale and flip a fine-tune trains with. An augmentation must keep
  the label: a head fitted on the clean training features scores augmented views of the
  validation images, and the strongest crop whose views score as well as the mildest crop's
  (within two standard errors) is kept; a flip is kept unless flipped views score worse than
  clean ones by more than two standard errors (text, digits, arrows change class when mirrored).
* ``cannot_catch_up``: whether a fine-tune still training should be given up. From half its
  epochs on, its validation curve is extrapolated: its best accuracy so far plus, for every epoch
  left, the mean gain per epoch of the second half of its curve so far. Learning curves flatten
  (and the cosine schedule slows the late epochs further), so the straight line is optimistic;
  when even it ends below the head beyond the noise of the comparison, the rest of the
  fine-tune would be spent on a candidate that ``keep_challenger`` will refuse.
* ``fine_tune_fits``: whether a fine-tune of at least ``MIN_FINE_TUNE_EPOCHS`` fits a time
  budget, from a measured training-step speed, with the forward passes before its epochs (the
  cached activations) and what comes after them (``after_training_seconds``: TEST, the trust
  pass and the writing, the very reserve the training loop keeps).

>>> head = Score("head", accuracy=0.96, loss=0.15, images=160)
>>> keep_challenger(head, Score("partial", accuracy=0.97, loss=0.14, images=160))[0]
False
>>> keep_challenger(head, Score("full", accuracy=0.99, loss=0.05, images=160))[0]
True

Paired: the head gets 9 of 90 images right that the fine-tune misses, the fine-tune 5 that the
head misses; 4 images' difference is beyond the paired noise (±4.1 points):

>>> head_right = [True] * 66 + [True] * 9 + [False] * 5 + [False] * 10
>>> tuned_right = [True] * 66 + [False] * 9 + [True] * 5 + [False] * 10
>>> head = Score("head", 75 / 90, 0.39, 90, correct=dict(enumerate(head_right)))
>>> tuned = Score("partial", 71 / 90, 0.43, 90, correct=dict(enumerate(tuned_right)))
>>> round(100 * accuracy_noise(head, tuned), 1), keep_challenger(head, tuned, tie="challenger")[0]
(4.1, False)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

__all__ = [
    "CROP_LADDER",
    "EVAL_MARGIN",
    "LOSS_MARGIN",
    "MIN_FINE_TUNE_EPOCHS",
    "TRAIN_STEP_COST",
    "WRITE_SECONDS",
    "Score",
    "accuracy_noise",
    "after_training_images",
    "after_training_seconds",
    "auto_plan",
    "cannot_catch_up",
    "choose_augment",
    "choose_best",
    "fine_tune_fits",
    "forward_seconds",
    "keep_challenger",
    "paired_counts",
]

# Inside the accuracy noise, a challenger's validation loss must be this much lower (relative)
# to count: a few per cent of cross-entropy moves with a single confident image.
LOSS_MARGIN = 0.10

# Crop scales (the smallest share of the image's area a random crop keeps) auto chooses from,
# strongest first; 0.35 is the ``standard`` preset's, 0.5 ``light``'s.
CROP_LADDER = (0.35, 0.5, 0.75)

# A fine-tune shorter than this barely moves from its starting point: not worth trying.
MIN_FINE_TUNE_EPOCHS = 2

# A training step (forward + backward) costs about three forward passes: the backward pass
# computes gradients for both activations and weights, about twice the forward's work (the usual
# 6N-versus-2N FLOPs per example estimate, Kaplan et al. 2020).
TRAIN_STEP_COST = 3.0
# A forward pass outside training (TEST, the trust pass, the cached activations) also decodes
# every image and is not overlapped with the loader's workers: half as much again as a third of
# a timed training step.
EVAL_MARGIN = 1.5
# Writing the bundle, history and metrics, and the process's exit.
WRITE_SECONDS = 3.0


@dataclass(frozen=True)
class Score:
    """A candidate's validation scores; ``accuracy``/``loss`` None without validation images."""

    name: str
    accuracy: float | None
    loss: float | None
    images: int
    seconds: float = 0.0
    # Per validation image (keyed by its path): whether the top class was right, so two
    # candidates compare image by image (``paired_counts``); None where not measured.
    correct: dict | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("correct")  # one entry per image: the record keeps the paired counts instead
        return out


def paired_counts(a: Score, b: Score) -> tuple[int, int, int] | None:
    """``(images, right only by a, right only by b)`` over the validation images both were
    scored on image by image; None unless both were, on the same images."""
    if not a.correct or not b.correct or a.correct.keys() != b.correct.keys():
        return None
    only_a = sum(a.correct[k] and not b.correct[k] for k in a.correct)
    only_b = sum(b.correct[k] and not a.correct[k] for k in a.correct)
    return len(a.correct), only_a, only_b


def _se(accuracy: float, images: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / max(images, 1))


def _gain(a: Score, b: Score, pairs: tuple[int, int, int] | None) -> float:
    """``b``'s accuracy minus ``a``'s: from their ``paired_counts`` where they have them."""
    if pairs is None:
        return b.accuracy - a.accuracy
    images, only_a, only_b = pairs
    return (only_b - only_a) / images


def accuracy_noise(a: Score, b: Score) -> float:
    """The standard error of ``b``'s accuracy minus ``a``'s, never less than one image: on 31
    images one image is 3 points, and one image is never evidence. Paired where both have
    per-image outcomes (McNemar: the variance of the mean per-image difference, from the
    discordant images alone), else as independent binomials."""
    return _noise(a, b, paired_counts(a, b))


def _noise(a: Score, b: Score, pairs: tuple[int, int, int] | None) -> float:
    """``accuracy_noise`` from the ``paired_counts`` of ``a`` and ``b`` (None: unpaired)."""
    if pairs is not None:
        images, only_a, only_b = pairs
        discordant = only_a + only_b - (only_b - only_a) ** 2 / images
        return max(math.sqrt(max(discordant, 0.0)) / images, 1 / images)
    images = max(min(a.images, b.images), 1)
    spread = math.sqrt(_se(a.accuracy, images) ** 2 + _se(b.accuracy, images) ** 2)
    return max(spread, 1 / images)


def _versus(incumbent: Score, challenger: Score, noise: float, pairs) -> str:
    """The comparison in words: both accuracies, the images, the noise (and the pairs)."""
    paired = (
        f"; paired: {pairs[2]} right only by {challenger.name}, {pairs[1]} only by {incumbent.name}"
        if pairs
        else ""
    )
    return (
        f"{challenger.name} {100 * challenger.accuracy:.1f}% vs {incumbent.name} "
        f"{100 * incumbent.accuracy:.1f}% validation accuracy on {challenger.images} images "
        f"(noise ±{100 * noise:.1f} points{paired})"
    )


def keep_challenger(
    incumbent: Score, challenger: Score, *, tie: str = "incumbent"
) -> tuple[bool, str]:
    """Whether ``challenger`` replaces ``incumbent``, and why, in words. ``tie``: which one an
    inconclusive comparison keeps (the prior): the cheaper ``"incumbent"``, or the
    ``"challenger"`` when a rule already chose it (the advisor's fine-tune)."""
    prior = challenger if tie == "challenger" else incumbent
    if incumbent.accuracy is None or challenger.accuracy is None or not challenger.images:
        return prior is challenger, f"no validation images to compare on: {prior.name} is kept"
    pairs = paired_counts(incumbent, challenger)
    noise = _noise(incumbent, challenger, pairs)
    gain = _gain(incumbent, challenger, pairs)
    versus = _versus(incumbent, challenger, noise, pairs)
    if abs(gain) > noise:
        better = challenger if gain > 0 else incumbent
        return better is challenger, f"{versus}: {better.name} is better beyond noise"
    lower = _clearly_lower_loss(incumbent, challenger)
    if lower is not None:
        return lower is challenger, (
            f"{versus}, a tie within noise; {lower.name}'s validation loss is lower by more "
            f"than {100 * LOSS_MARGIN:.0f}% ({_losses(incumbent, challenger)})"
        )
    why = "the advisor's choice" if prior is challenger else "the cheaper"
    return prior is challenger, (
        f"{versus}, a tie within noise ({_losses(incumbent, challenger)}): {why}, "
        f"{prior.name}, is kept"
    )


def _clearly_lower_loss(a: Score, b: Score) -> Score | None:
    """The one of ``a`` and ``b`` whose validation loss is lower by more than ``LOSS_MARGIN``."""
    if a.loss is None or b.loss is None:
        return None
    if b.loss < a.loss * (1 - LOSS_MARGIN):
        return b
    if a.loss < b.loss * (1 - LOSS_MARGIN):
        return a
    return None


def _losses(a: Score, b: Score) -> str:
    if a.loss is None or b.loss is None:
        return "no validation loss"
    return f"validation loss {b.name} {b.loss:.3f}, {a.name} {a.loss:.3f}"


def choose_best(candidates: list[Score]) -> tuple[int, list[str]]:
    """The index of the candidate kept from ``candidates`` (cheapest first), each costlier one
    challenging the one kept so far; and the reasons, one per challenge."""
    kept, reasons = 0, []
    for i in range(1, len(candidates)):
        wins, why = keep_challenger(candidates[kept], candidates[i])
        reasons.append(why)
        if wins:
            kept = i
    return kept, reasons


def _projected(curve: list[float], epochs: int) -> tuple[float, float]:
    """The best of ``curve`` (validation accuracy per epoch) so far, extrapolated linearly to
    ``epochs`` at the mean gain per epoch of the running best over the last half of the curve
    (its last ``n // 2`` steps, one at least); and that gain."""
    best = list(itertools.accumulate(curve, max))
    steps = max(1, len(best) // 2)
    gain = (best[-1] - best[-1 - steps]) / steps if len(best) > steps else 0.0
    return min(1.0, best[-1] + gain * (epochs - len(best))), gain


def cannot_catch_up(incumbent: Score, history: list[dict], epochs: int) -> str | None:
    """Why a challenger fine-tuning for ``epochs`` (its ``history`` rows so far, with
    ``val_acc``) is to be given up against ``incumbent``, or None to let it go on.

    >>> head = Score("head", accuracy=0.867, loss=0.35, images=90)
    >>> flat = [{"val_acc": a} for a in (0.70, 0.77, 0.78)]
    >>> cannot_catch_up(head, flat, epochs=6) is not None   # 78 %, +1 point an epoch
    True
    >>> rising = [{"val_acc": a} for a in (0.70, 0.78, 0.84)]
    >>> cannot_catch_up(head, rising, epochs=6) is None     # +6 points an epoch: may win
    True
    """
    done = len(history)
    curve = [r.get("val_acc") for r in history]
    if incumbent.accuracy is None or not incumbent.images or done >= epochs:
        return None
    if done < max(MIN_FINE_TUNE_EPOCHS, math.ceil(epochs / 2)):
        return None
    if any(a is None or not math.isfinite(a) for a in curve):
        return None
    projected, gain = _projected(curve, epochs)
    reach = Score("challenger", projected, None, incumbent.images)
    noise = accuracy_noise(incumbent, reach)
    if incumbent.accuracy - projected <= noise:
        return None
    return (
        f"given up after {done} of {epochs} epochs: its best validation accuracy so far is "
        f"{100 * max(curve):.1f}%; gaining {100 * gain:.1f} points an epoch to the end it would "
        f"reach {100 * projected:.1f}%, below {incumbent.name}'s {100 * incumbent.accuracy:.1f}% "
        f"beyond noise (±{100 * noise:.1f} points)"
    )


def _retained(accuracy: float, reference: float, images: int) -> bool:
    """``accuracy`` no worse than ``reference`` beyond two standard errors (one image at least)."""
    return accuracy >= reference - max(2 * _se(reference, images), 1 / max(images, 1))


def choose_augment(
    clean: float, crops: dict[float, float], flipped: float | None, images: int
) -> tuple[str, str]:
    """The ``--augment`` ops (``crop=S[,flip]``) from validation accuracies of a clean-fitted
    head: on the clean views, on crops at each ``CROP_LADDER`` scale, on mirrored views. And why.

    >>> choose_augment(0.9, {0.35: 0.88, 0.5: 0.89, 0.75: 0.9}, 0.9, 200)[0]
    'crop=0.35,flip=0.5'
    >>> choose_augment(0.9, {0.35: 0.70, 0.5: 0.86, 0.75: 0.9}, 0.6, 200)[0]
    'crop=0.5'
    """
    mildest = max(crops)
    scale = next(s for s in sorted(crops) if _retained(crops[s], crops[mildest], images))
    flip = flipped is not None and _retained(flipped, clean, images)
    views = ", ".join(f"crop {s:g}: {100 * a:.1f}%" for s, a in sorted(crops.items()))
    why = (
        f"a head fitted on clean features scores {100 * clean:.1f}% on the {images} validation "
        f"images, {views}"
        + (f", mirrored: {100 * flipped:.1f}%" if flipped is not None else "")
        + f"; the strongest crop that keeps as much as the mildest is {scale:g}"
        + ("" if flip else "; mirroring loses accuracy, so no flip")
    )
    return f"crop={scale:g}" + (",flip=0.5" if flip else ""), why


def forward_seconds(step_seconds_per_image: float, images: int) -> float:
    """Seconds of forward passes over ``images``, decoding included, from a measured training
    step: a third of a step (``TRAIN_STEP_COST``), and half as much again (``EVAL_MARGIN``)."""
    return EVAL_MARGIN * step_seconds_per_image / TRAIN_STEP_COST * images


def after_training_images(train: int, val: int, test: int) -> int:
    """Images a fine-tune still passes forward after its last epoch: TEST's evaluation, then
    the trust pass (``training.trust``) over train, validation and TEST."""
    return 2 * test + train + val


def after_training_seconds(step_seconds_per_image: float, *, train: int, val: int, test: int):
    """What a fine-tune's run still needs once its last epoch ends: the forward passes of
    ``after_training_images`` and the writing. The training loop stops its epochs this long
    before the deadline, and ``fine_tune_fits`` prices the same reserve: one formula, so a
    fine-tune the plan says fits is never cut inside its first epochs by the loop's reserve."""
    images = after_training_images(train, val, test)
    return forward_seconds(step_seconds_per_image, images) + WRITE_SECONDS


def fine_tune_fits(
    seconds_left: float,
    *,
    step_seconds_per_image: float,
    train_images: int,
    epoch_step_seconds_per_image: float | None = None,
    val_images: int = 0,
    test_images: int = 0,
    before_images: int = 0,
) -> tuple[bool, float]:
    """Whether ``MIN_FINE_TUNE_EPOCHS`` of fine-tuning fit ``seconds_left`` with the forward
    passes before them (``before_images``: the cached activations' views) and what the run
    needs after them (``after_training_seconds``, the training loop's own reserve); and the
    estimate, in seconds. ``step_seconds_per_image``: the whole network's training step, which
    prices the forward passes; ``epoch_step_seconds_per_image``: the step the epochs run, when
    they run less than the whole network (the trainable stages on cached activations)."""
    epoch = (epoch_step_seconds_per_image or step_seconds_per_image) * train_images
    before = forward_seconds(step_seconds_per_image, before_images)
    after = after_training_seconds(
        step_seconds_per_image, train=train_images, val=val_images, test=test_images
    )
    needed = MIN_FINE_TUNE_EPOCHS * epoch + before + after
    return needed <= seconds_left, needed


def auto_plan(strategy: str) -> str:
    """What ``--strategy auto`` does with the advisor's ``strategy``, in one sentence."""
    if strategy == "head":
        return (
            "auto trains the head on cached features and stops there: the advisor sees no "
            "fine-tune worth its time on this data"
        )
    return (
        f"auto trains the head on cached features first, then `{strategy}` (unless the head is "
        f"perfect on validation or --time-budget leaves no room for two epochs), and keeps "
        f"`{strategy}` unless the head beats it on validation beyond noise"
    )
