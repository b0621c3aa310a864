"""Load a model and its processor: a ``tiny-*`` id built in code, a local directory, or a hub id."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from videoqa.worker.errors import InvalidInput
from videoqa.worker.model import tv_shim  # noqa: F401  (before transformers)
from videoqa.worker.model.families import FamilyAdapter, adapter_for
from videoqa.worker.model.recurrent import LayerKinds
from videoqa.worker.model.tiny import TINY_MODELS, build_tiny

log = logging.getLogger(__name__)


def _demo_checkpoint() -> Path:
    """The ``videoqa-demo`` files: ``worker/model/demo`` beside this file in a checkout (an editable
    install), else the ``videoqa-demo-model`` distribution the server extra installs (the videoqa
    wheel leaves the weights out)."""
    here = Path(__file__).parent / "demo"
    if (here / "config.json").is_file():
        return here
    try:
        from videoqa_demo_model import PATH
    except ImportError:
        return here  # load_model says how to install it
    return PATH


#: Checkpoints that ship with the server install, by id. ``videoqa-demo`` is the demo model v2 (a
#: Qwen3-VL-architecture model) trained on synthetic suite v2 by ``python -m videoqa.lab.train
#: --suite v2`` (see docs/quality.md).
BUILTIN_CHECKPOINTS = {"videoqa-demo": _demo_checkpoint()}
BUILTIN_DISTRIBUTIONS = {"videoqa-demo": "videoqa-demo-model"}
DEFAULT_MODEL = "videoqa-demo"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    """A model ready to serve. ``revision`` identifies weights plus processor configuration."""

    model_id: str
    model: Any
    processor: Any
    adapter: FamilyAdapter
    revision: str
    device: torch.device
    dtype: torch.dtype

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def layer_kinds(self) -> LayerKinds:
        """Which decoder layers have linear attention (hybrid models) and which a KV cache."""
        return LayerKinds.of(self.text_config)

    @property
    def num_layers(self) -> int:
        """Layers with a KV cache (a hybrid model's full-attention layers): what pruning sees."""
        return len(self.layer_kinds.attention_layers)

    @property
    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V per context token over all KV layers."""
        cfg = self.text_config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        return int(self.num_layers * 2 * kv_heads * head_dim * torch.finfo(self.dtype).bits // 8)

    @property
    def linear_state_bytes(self) -> int:
        """Bytes of a session's linear-attention states (hybrid models; 0 otherwise): per linear
        layer a convolution state (model dtype) and a recurrent state (float32), whatever the
        context's length."""
        cfg, linear = self.text_config, len(self.layer_kinds.linear_layers)
        if not linear:
            return 0
        key = cfg.linear_num_key_heads * cfg.linear_key_head_dim
        value = cfg.linear_num_value_heads * cfg.linear_value_head_dim
        conv = (2 * key + value) * cfg.linear_conv_kernel_dim * torch.finfo(self.dtype).bits // 8
        recurrent = cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim * 4
        return int(linear * (conv + recurrent))

    @property
    def eos_token_ids(self) -> set[int]:
        ids: set[int] = set()
        configured = getattr(self.model.generation_config, "eos_token_id", None)
        for value in configured if isinstance(configured, list) else [configured]:
            if value is not None:
                ids.add(int(value))
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return ids


#: Keys that say where or by what a checkpoint was written, not what it computes.
_NOT_IDENTITY = {"_name_or_path", "name_or_path", "transformers_version", "_commit_hash", "processor_class"}


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in sorted(value.items()) if k not in _NOT_IDENTITY}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _config_digest(model: Any, processor: Any) -> hashlib._Hash:
    """Digest of the model and processor configuration, independent of where they were loaded from."""
    digest = hashlib.sha256()
    digest.update(json.dumps(_canonical(model.config.to_dict()), sort_keys=True, default=str).encode())
    processor_dict = processor.to_dict() if hasattr(processor, "to_dict") else {}
    digest.update(json.dumps(_canonical(processor_dict), sort_keys=True, default=str).encode())
    return digest


def _weights_fingerprint(directory: Path, digest: hashlib._Hash) -> None:
    """Size plus the first and last MiB of every weight file: cheap, and changes with the weights."""
    for path in sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with path.open("rb") as handle:
            digest.update(handle.read(1 << 20))
            handle.seek(max(0, size - (1 << 20)))
            digest.update(handle.read(1 << 20))


def _state_fingerprint(model: Any, digest: hashlib._Hash) -> None:
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().float().flatten()[:64].numpy().tobytes())


def load_model(model_id: str, *, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """Load ``model_id``: ``tiny-*`` (built in code), a built-in checkpoint (``videoqa-demo``), a
    directory saved by ``save_pretrained``, or a hub id (needs the weights in the local Hugging
    Face cache or network access)."""
    if dtype not in DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    torch_dtype = DTYPES[dtype]
    if model_id in TINY_MODELS:
        model, processor = build_tiny(model_id)
        model = model.to(dtype=torch_dtype)
        digest = _config_digest(model, processor)
        _state_fingerprint(model, digest)
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        builtin = BUILTIN_CHECKPOINTS.get(model_id)
        if builtin is not None and not (builtin / "config.json").is_file():
            raise FileNotFoundError(
                f"the {model_id} checkpoint is not installed: pip install {BUILTIN_DISTRIBUTIONS[model_id]} "
                "(the server extra asks for it; from a checkout: pip install ./worker/model/demo)"
            )
        source = str(builtin or os.path.expanduser(model_id))
        log.info("loading %s", source)
        processor = AutoProcessor.from_pretrained(source)
        model = AutoModelForImageTextToText.from_pretrained(source, dtype=torch_dtype).eval()
        digest = _config_digest(model, processor)
        if Path(source).is_dir():
            _weights_fingerprint(Path(source), digest)
        else:
            digest.update(str(getattr(model.config, "_commit_hash", "") or "").encode())
    from videoqa.worker.model.attention import install

    install(model)  # sdpa, plus the statistics and per-layer masks pruning needs
    model = model.to(device)
    adapter = adapter_for(model, processor)
    return LoadedModel(
        model_id=model_id,
        model=model,
        processor=processor,
        adapter=adapter,
        revision=digest.hexdigest()[:16],
        device=torch.device(device),
        dtype=torch_dtype,
    )
