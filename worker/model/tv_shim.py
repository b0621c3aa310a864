"""Make transformers' video processors work with a CPU torch and the PyPI torchvision wheel.

The PyPI torchvision wheel is a CUDA build: on a ``+cpu`` torch its compiled ops fail to load and
``import torchvision`` dies with "operator torchvision::nms does not exist". transformers' video
processors need torchvision (only its pure-torch transforms), so before anything imports it we
declare the two detection ops it registers fakes for. On a machine where the compiled ops load
(a CUDA torch with its matching torchvision), this does nothing.

Must be imported before ``transformers`` or ``torchvision`` (``videoqa.worker.model`` does it).
"""

from __future__ import annotations

import importlib.util
import os

import torch

_library: torch.library.Library | None = None


def install() -> bool:
    """Declare the missing ops if torchvision's compiled library cannot load; True if it did."""
    global _library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return False
    compiled = os.path.join(next(iter(spec.submodule_search_locations)), "_C.so")
    try:
        torch.ops.load_library(compiled)
        return False
    except (OSError, ImportError, RuntimeError):
        pass
    if _library is None:
        _library = torch.library.Library("torchvision", "DEF")
        _library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return True


SHIMMED = install()
