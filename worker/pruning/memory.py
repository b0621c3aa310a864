"""``retentive_kv``'s memory: evicted tokens folded into a linear-attention state, read at decode.

A reconstruction (RetentiveKV, ACL 2026 Findings, publishes no code; see docs/pruning.md). Per
layer and KV head, the tokens evicted at the prefill become

    S = Σ_j β_j φ(k_j) v_jᵀ   [D, D],     z = Σ_j β_j φ(k_j)   [D],     φ(x) = elu(x) + 1,

with the update gate β_j driven by the entropy of token j's attention over the queries that saw
it (high entropy: attended broadly, a token whose importance may come back later). Every later
query reads it as linear attention, ``φ(q)ᵀS / φ(q)ᵀz``, and the layer's output becomes

    (1 − g)·softmax-attention over the kept cache + g·read-out,

with a training-free gate ``g`` per KV head: the share of attention the evicted tokens held, at
the prefill, from the observation window (the question, or the probe), times ``gate_scale``
(clipped to 1). Nothing evicted: ``g = 0`` and the layer is plain attention, bit for bit.
The memory is fixed after the prefill; it lives on the model's device and is stored with the
session.
"""

from __future__ import annotations

from typing import Any

import torch

from videoqa.worker.errors import CorruptSession
from videoqa.worker.model.attention import RetainedLayer, feature_map
from videoqa.worker.pruning.extension import CacheExtension, extension_kind


def fold(keys: torch.Tensor, values: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The memory of a set of evicted entries, per head: ``keys``/``values`` [H_kv, n, D] (post-RoPE,
    as cached), ``weights`` [H_kv, n] (β) → state [H_kv, D, D] and normalizer [H_kv, D], float32."""
    phi = feature_map(keys) * weights.float()[..., None]  # [H_kv, n, D]
    return phi.transpose(1, 2) @ values.float(), phi.sum(dim=1)


@extension_kind
class RetainedMemory(CacheExtension):
    """Per layer: state [H_kv, D, D], normalizer [H_kv, D], gate [H_kv] (see the module docstring)."""

    kind = "retained_memory"

    def __init__(self, layers: dict[int, RetainedLayer]):
        #: Batch dimension 1, on the model's device.
        self.layers = layers

    @classmethod
    def build(cls, per_layer: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> RetainedMemory:
        """From ``{layer: (state [H_kv, D, D], normalizer [H_kv, D], gate [H_kv])}``."""
        return cls({i: RetainedLayer(s[None], z[None], g[None]) for i, (s, z, g) in per_layer.items()})

    def memory(self, layer: int) -> RetainedLayer | None:
        return self.layers.get(layer)

    def nbytes(self) -> int:
        return sum(t.nbytes for m in self.layers.values() for t in (m.state, m.normalizer, m.gate))

    def checkpoint(self) -> Any:
        return None  # fixed after the prefill

    def rollback(self, token: Any) -> None:
        pass

    def to_record(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors = {}
        for i, m in self.layers.items():
            tensors[f"mem.state.{i}"], tensors[f"mem.norm.{i}"], tensors[f"mem.gate.{i}"] = (
                m.state[0],
                m.normalizer[0],
                m.gate[0],
            )
        return {"kind": self.kind, "layers": sorted(self.layers)}, tensors

    @classmethod
    def from_record(cls, header: dict[str, Any], tensors: dict[str, torch.Tensor], device: torch.device):
        try:
            return cls.build(
                {
                    int(i): tuple(tensors[f"mem.{part}.{i}"].to(device) for part in ("state", "norm", "gate"))
                    for i in header["layers"]
                }
            )
        except KeyError as missing:
            raise CorruptSession(f"stored retained memory is missing {missing}") from None
