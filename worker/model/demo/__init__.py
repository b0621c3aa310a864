"""The ``videoqa-demo`` checkpoint: the weights, processor and tokenizer files beside this file.

They are their own distribution, ``videoqa-demo-model`` (this directory's pyproject.toml), imported as
``videoqa_demo_model``; the ``server`` extra asks for it and the videoqa wheel leaves the weights out.
``videoqa.worker.model.loader`` finds them here in a checkout and through :data:`PATH` when installed.
How the model is trained and what it answers: docs/quality.md.
"""

from pathlib import Path

#: The directory holding the checkpoint (``from_pretrained`` reads it).
PATH = Path(__file__).resolve().parent
