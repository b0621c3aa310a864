"""One file per reduction method; importing this package registers them all."""

from videoqa.worker.reduction.methods import evs, vidcom2  # noqa: F401
