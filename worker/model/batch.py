"""One decode step for several sessions at once.

Each session keeps its own cache ([1, H_kv, S_b, D] per layer, lengths differing between sessions
and, with per-layer budgets, between layers). A :class:`DecodeBatch` stacks them, right-padded to
the longest per layer, into one cache [B, H_kv, W, D]; every step appends one entry per row at the
end, so a row's entries are ``[own S_b | padding | appended steps]``. A float key mask per layer
[B, H, 1, W'] hides the padding and carries each row's recycled-entry bias; positions are explicit
per row (each session's own ``next_pos`` and ``rope_delta``).

After every step each row's new entry is also appended to its session's own cache, so a session is
always complete and consistent (its turn can end, be saved, or roll back between any two steps);
the padded stack is rebuilt only when the set of rows changes.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from videoqa.worker.model.generate import ConversationState
from videoqa.worker.model.loader import LoadedModel
from videoqa.worker.pruning.attention import row_masks


class DecodeBatch:
    """The stacked caches of ``states`` (one model) and the key masks that go with them."""

    def __init__(self, lm: LoadedModel, states: list[ConversationState]):
        if not states:
            raise ValueError("a batch needs at least one session")
        self.lm, self.states = lm, list(states)
        layers = len(states[0].cache.layers)
        device = lm.device
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._masks: dict[int, torch.Tensor] = {}
        heads = lm.model.config.get_text_config().num_attention_heads
        for index in range(layers):
            rows = [state.cache.layers[index] for state in states]
            width = max(int(r.keys.shape[2]) for r in rows)
            keys = rows[0].keys.new_zeros((len(rows), *rows[0].keys.shape[1:2], width, rows[0].keys.shape[3]))
            values = rows[0].values.new_zeros((len(rows), *rows[0].values.shape[1:2], width, rows[0].values.shape[3]))
            mask = torch.full((len(rows), heads, 1, width), float("-inf"), dtype=torch.float32, device=device)
            for b, (row, state) in enumerate(zip(rows, states, strict=True)):
                length = int(row.keys.shape[2])
                keys[b, :, :length] = row.keys[0]
                values[b, :, :length] = row.values[0]
                mask[b, :, :, :length] = 0.0
                bias = state.attention_bias.get(index)
                if bias is not None:  # [H_kv, n] on the first n entries, shared by each KV group's heads
                    n = min(int(bias.shape[1]), length)
                    expanded = bias[:, :n].float().repeat_interleave(heads // bias.shape[0], dim=0)
                    mask[b, :, 0, :n] += expanded.to(device)
            self._layers.append((keys, values))
            self._masks[index] = mask
        self.cache = DynamicCache(self._layers)
        self._next = [state.next_pos for state in states]  # what each row's session should be at

    @property
    def size(self) -> int:
        return len(self.states)

    def holds(self, states: list[ConversationState]) -> bool:
        """Whether this batch is exactly ``states``, in order, none changed since its last step
        (a session fed or rolled back outside the batch needs a new stack)."""
        return len(states) == len(self.states) and all(
            a is b and a.next_pos == n for a, b, n in zip(states, self.states, self._next, strict=True)
        )

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed ``tokens[b]`` to row b at its session's next position; the logits [B, vocab]."""
        if len(tokens) != self.size:
            raise ValueError(f"{len(tokens)} tokens for {self.size} rows")
        device, adapter = self.lm.device, self.lm.adapter
        positions = torch.cat([adapter.text_positions(s.next_pos, 1, s.rope_delta) for s in self.states], dim=-2).to(
            device
        )  # [3, B, 1] (M-RoPE) or [B, 1]
        zero = torch.zeros((self.size, next(iter(self._masks.values())).shape[1], 1, 1), device=device)
        self._masks = {layer: torch.cat([mask, zero], dim=-1) for layer, mask in self._masks.items()}
        with row_masks(self._masks):
            out = self.lm.model(
                input_ids=torch.tensor(tokens, device=device).view(self.size, 1),
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        for b, (state, token) in enumerate(zip(self.states, tokens, strict=True)):
            for own, stacked in zip(state.cache.layers, self.cache.layers, strict=True):
                own.keys = torch.cat([own.keys, stacked.keys[b : b + 1, :, -1:]], dim=2)
                own.values = torch.cat([own.values, stacked.values[b : b + 1, :, -1:]], dim=2)
            state.next_pos += 1
            state.token_ids.append(token)
            self._next[b] = state.next_pos
        return out.logits[:, -1].float()
