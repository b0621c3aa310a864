"""One evaluation item, whatever suite it comes from (the synthetic suite, MileBench-format data)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from videoqa.worker.types import MediaKind


@dataclass
class Sample:
    """A question about a video or an image sequence, with an exactly checkable answer.

    ``media`` is the encoded video file (``kind`` VIDEO) or one encoded image per item (IMAGES).
    ``needle`` is where the evidence sits, as a fraction of the sequence in [0, 1] (None when the
    question is about the whole sequence); the harness buckets it for the myopia curve.
    """

    sample_id: str
    family: str
    question: str
    answer: str
    kind: MediaKind
    media: bytes | list[bytes]
    num_frames: int
    needle: float | None = None
    #: Accepted answers besides ``answer`` (e.g. a multiple-choice letter and its text).
    aliases: list[str] = field(default_factory=list)
    #: Ordinals, among the video's visual tokens in prompt order, of the tokens that show the
    #: answer (suite v2, for the model grid it was built for; empty when unknown): what the
    #: ``oracle`` configuration keeps.
    evidence: tuple[int, ...] = ()
    #: For a numeric answer (seconds): a prediction whose first number is within this of the
    #: answer is right. None: the answer is matched as text.
    tolerance: float | None = None


def normalize(text: str) -> str:
    """Lower case, first line, punctuation and articles dropped, spaces collapsed."""
    text = text.strip().splitlines()[0] if text.strip() else ""
    words = re.sub(r"[^\w\s]", " ", text.lower()).split()
    if len(words) > 1:  # "A" alone is an answer (option A), not an article
        words = [w for w in words if w not in {"a", "an", "the"}] or words
    return " ".join(words)


def is_correct(prediction: str, sample: Sample) -> bool:
    """Exact match after normalisation, or the prediction starts with an accepted answer; for a
    sample with a ``tolerance``, the prediction's first number within it of the answer."""
    if sample.tolerance is not None:
        number = re.search(r"-?\d+(?:\.\d+)?", prediction)
        return number is not None and abs(float(number.group()) - float(sample.answer)) <= sample.tolerance
    guess = normalize(prediction)
    for accepted in [sample.answer, *sample.aliases]:
        want = normalize(accepted)
        if want and (guess == want or guess.startswith(want + " ")):
            return True
    return False
