"""The linear-attention state of a hybrid model's session (Qwen3.5).

A hybrid model interleaves linear-attention layers (a gated delta rule: per layer a convolution
state [1, C, K] over the last K inputs and a recurrent state [1, H_v, d_k, d_v], both of fixed
size whatever the context's length) with full-attention layers, which keep a KV cache. The model
runs over one transformers cache holding both kinds in layer order. A session keeps them apart:

- its KV cache (``ConversationState.cache``) holds the full-attention layers only, numbered
  0 … n_kv − 1: what pruning, session records, batched decoding and every attention statistic see
  (the attention hook numbers the layers the same way, see :func:`number_attention_layers`);
- its :class:`LinearStates` hold the linear-attention layers.

:meth:`LinearStates.model_cache` puts both back in the model's layer order for a forward: the same
layer objects, so the forward extends the KV cache and advances the linear states together.

A recurrent state cannot be cut back to an earlier length the way a KV cache is truncated: the
library updates it in place, token by token. So a checkpoint copies it (:meth:`snapshot`) and a
rollback puts the copy back (:meth:`restore`); pruning never touches it (it holds no tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import LinearAttentionLayer


@dataclass(frozen=True)
class LayerKinds:
    """Which of a model's decoder layers have linear attention (the rest keep a KV cache)."""

    linear: tuple[bool, ...]

    @classmethod
    def of(cls, text_config: Any) -> LayerKinds:
        types = getattr(text_config, "layer_types", None) or ["full_attention"] * int(text_config.num_hidden_layers)
        return cls(tuple(kind == "linear_attention" for kind in types))

    @property
    def hybrid(self) -> bool:
        return any(self.linear)

    @property
    def attention_layers(self) -> list[int]:
        """Model layer index of each KV layer, in order."""
        return [i for i, linear in enumerate(self.linear) if not linear]

    @property
    def linear_layers(self) -> list[int]:
        return [i for i, linear in enumerate(self.linear) if linear]


@dataclass(frozen=True)
class LinearSnapshot:
    """Copies of every linear layer's state (``None`` for a layer that has seen no token yet)."""

    conv: tuple[torch.Tensor | None, ...]
    recurrent: tuple[torch.Tensor | None, ...]
    #: Tokens each layer has seen.
    seen: tuple[int, ...]


class LinearStates:
    """The linear-attention layers of one session (or, stacked, of a decode batch's rows)."""

    def __init__(self, kinds: LayerKinds, layers: list[LinearAttentionLayer]):
        if len(layers) != len(kinds.linear_layers):
            raise ValueError(f"{len(layers)} linear layers for a model with {len(kinds.linear_layers)}")
        self.kinds = kinds
        self.layers = layers

    # --- building --------------------------------------------------------------------------------

    @classmethod
    def empty(cls, kinds: LayerKinds) -> LinearStates:
        """States that have seen no token (each layer initialises on its first forward)."""
        return cls(kinds, [LinearAttentionLayer() for _ in kinds.linear_layers])

    @classmethod
    def split(cls, kinds: LayerKinds, cache: DynamicCache) -> tuple[DynamicCache, LinearStates]:
        """A model's cache in layer order → (its KV layers alone, its linear states)."""
        kv = DynamicCache()
        kv.layers = [cache.layers[i] for i in kinds.attention_layers]
        return kv, cls(kinds, [cache.layers[i] for i in kinds.linear_layers])

    def model_cache(self, kv: DynamicCache) -> DynamicCache:
        """One cache in the model's layer order over ``kv``'s layers and these states."""
        attention, linear = iter(kv.layers), iter(self.layers)
        cache = DynamicCache()
        cache.layers = [next(linear) if is_linear else next(attention) for is_linear in self.kinds.linear]
        return cache

    # --- checkpoints -----------------------------------------------------------------------------

    def snapshot(self) -> LinearSnapshot:
        """Copies of every state (the library updates them in place)."""
        return LinearSnapshot(
            tuple(_clone(layer.conv_states[0]) for layer in self.layers),
            tuple(_clone(layer.recurrent_states[0]) for layer in self.layers),
            tuple(self.seen),
        )

    def restore(self, snapshot: LinearSnapshot) -> None:
        """Put every state back as :meth:`snapshot` found it."""
        self.layers = [
            _layer(conv, recurrent, seen)
            for conv, recurrent, seen in zip(snapshot.conv, snapshot.recurrent, snapshot.seen, strict=True)
        ]

    @property
    def seen(self) -> list[int]:
        """Tokens each layer has seen (the library's count)."""
        return [int(layer.cumulative_length_linear) for layer in self.layers]

    def nbytes(self) -> int:
        return sum(t.nbytes for layer in self.layers for t in _tensors(layer))

    # --- records -----------------------------------------------------------------------------------

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Copies of ``conv.{j}`` [1, C, K] and ``rec.{j}`` [1, H_v, d_k, d_v] of linear layer j,
        and ``seen`` [n_linear] (int64); layers that have seen nothing are left out. Copies: the
        next token changes the live ones in place, and a record may be written while it runs."""
        tensors: dict[str, torch.Tensor] = {"seen": torch.tensor(self.seen, dtype=torch.int64)}
        for j, layer in enumerate(self.layers):
            if layer.conv_states[0] is not None:
                tensors[f"conv.{j}"] = layer.conv_states[0].clone()
            if layer.recurrent_states[0] is not None:
                tensors[f"rec.{j}"] = layer.recurrent_states[0].clone()
        return tensors

    @classmethod
    def from_tensors(cls, kinds: LayerKinds, tensors: dict[str, torch.Tensor], device: torch.device) -> LinearStates:
        """The states :meth:`to_tensors` wrote (``KeyError``/``ValueError`` when they do not fit)."""
        seen = tensors["seen"].tolist()
        if len(seen) != len(kinds.linear_layers):
            raise ValueError(f"{len(seen)} linear layers stored for a model with {len(kinds.linear_layers)}")
        layers = []
        for j, count in enumerate(seen):
            conv, recurrent = tensors.get(f"conv.{j}"), tensors.get(f"rec.{j}")
            if (conv is None) != (recurrent is None) or (conv is None and count):
                raise ValueError(f"linear layer {j}'s stored state is incomplete")
            move = (lambda t: t.to(device).clone()) if conv is not None else (lambda t: t)
            layers.append(_layer(move(conv), move(recurrent), int(count)))
        return cls(kinds, layers)

    # --- batched decoding --------------------------------------------------------------------------

    @classmethod
    def stacked(cls, rows: list[LinearStates]) -> LinearStates:
        """The rows' states along the batch dimension (copies: a step updates them in place).
        Every row must have seen tokens (a batch decodes sessions after their prefill)."""
        kinds = rows[0].kinds
        layers = []
        for j in range(len(kinds.linear_layers)):
            conv = torch.cat([row.layers[j].conv_states[0] for row in rows])
            recurrent = torch.cat([row.layers[j].recurrent_states[0] for row in rows])
            layers.append(_layer(conv, recurrent, 0))
        return cls(kinds, layers)

    def row(self, b: int, into: LinearStates) -> None:
        """Copy batch row ``b``'s states into the one-session ``into`` (its decoded steps counted)."""
        layers = []
        for stacked, own in zip(self.layers, into.layers, strict=True):
            steps = int(stacked.cumulative_length_linear)
            layers.append(
                _layer(
                    stacked.conv_states[0][b : b + 1].clone(),
                    stacked.recurrent_states[0][b : b + 1].clone(),
                    int(own.cumulative_length_linear) + steps,
                )
            )
        into.layers = layers


def _clone(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.clone()


def _tensors(layer: LinearAttentionLayer) -> list[torch.Tensor]:
    return [t for t in (layer.conv_states[0], layer.recurrent_states[0]) if t is not None]


def _layer(conv: torch.Tensor | None, recurrent: torch.Tensor | None, seen: int) -> LinearAttentionLayer:
    """A linear layer holding ``conv`` [B, C, K] and ``recurrent`` [B, H_v, d_k, d_v] (both owned:
    the library writes into them) after ``seen`` tokens; a fresh one when they are ``None``."""
    layer = LinearAttentionLayer()
    if conv is None or recurrent is None:
        return layer
    layer.lazy_initialization(conv_states=conv, recurrent_states=recurrent)
    layer.conv_states[0].copy_(conv)
    layer.recurrent_states[0].copy_(recurrent)
    layer.has_previous_state[0] = True
    layer.cumulative_length_linear.fill_(seen)
    return layer


def number_attention_layers(model: Any) -> None:
    """Number the language model's attention modules 0 … n_kv − 1 in layer order
    (``videoqa_layer``): the index of their layer in a session's KV cache, which the attention
    hook reports statistics under and looks masks, biases and memories up by. Equal to the
    model's own ``layer_idx`` except in hybrid models, whose linear layers have no KV cache."""
    attention = [
        module
        for module in model.modules()
        if getattr(module, "is_causal", False) and isinstance(getattr(module, "layer_idx", None), int)
    ]
    for index, module in enumerate(sorted(attention, key=lambda m: m.layer_idx)):
        module.videoqa_layer = index
