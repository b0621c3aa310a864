"""One decode step for several sessions at once.

Each session keeps its own cache ([1, H_kv, S_b, D] per layer, lengths differing between sessions
and, with per-layer budgets, between layers). A :class:`DecodeBatch` moves them into one stack per
layer [B, H_kv, C, D], right-padded to the longest row (width W) with room to grow (capacity C).
Every step writes one entry per row at column W + t, in place, so a row is
``[own S_b | padding | its steps]``. A float key mask per layer [B, H, 1, ·] hides the padding and
carries each row's recycled-entry bias; positions are explicit per row (each session's own
``next_pos`` and ``rope_delta``). Sessions with a cache extension bring their retained memory (one
stack per layer, zeros with a zero gate for the rows without: their output is untouched) and their
decode observers (each sees only its own row's entries, in its own cache order). A hybrid model's
linear-attention states are stacked along the batch dimension too (one-token steps need no
padding: each row's state advances by its own token).

While in a batch, a session's K/V live only in the stack (one copy, no per-step copying): the
session is *lent* to the batch. Reading its ``cache`` gives it back (its entries and steps are
copied out, and the batch no longer holds that row); lengths and byte counts are answered from the
batch's bookkeeping without moving anything.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from videoqa.worker.model.attention import RetainedLayer, decode_observers, retained_state, row_masks
from videoqa.worker.model.clock import model_work
from videoqa.worker.model.loader import LoadedModel
from videoqa.worker.model.recurrent import LinearStates
from videoqa.worker.model.state import ConversationState

#: Steps of room made when the stack is built or full.
GROW_STEPS = 64


class _StackLayer(DynamicLayer):
    """One layer's stacked K/V [B, H_kv, C, D]; ``update`` writes the step's column in place."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self._keys, self._values, self.length = keys, values, length
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    @property
    def keys(self) -> torch.Tensor:
        return self._keys[:, :, : self.length]

    @keys.setter
    def keys(self, value) -> None:  # the base class's reset; the stack is never reset
        pass

    @property
    def values(self) -> torch.Tensor:
        return self._values[:, :, : self.length]

    @values.setter
    def values(self, value) -> None:
        pass

    def reserve(self, columns: int) -> None:
        """Make sure ``columns`` more entries fit (doubling the capacity when they do not)."""
        if self.length + columns > self._keys.shape[2]:
            capacity = max(self.length + columns, 2 * self._keys.shape[2])
            for name in ("_keys", "_values"):
                old = getattr(self, name)
                new = old.new_zeros((*old.shape[:2], capacity, old.shape[3]))
                new[:, :, : self.length] = old[:, :, : self.length]
                setattr(self, name, new)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        steps = key_states.shape[2]
        self.reserve(steps)
        self._keys[:, :, self.length : self.length + steps] = key_states
        self._values[:, :, self.length : self.length + steps] = value_states
        self.length += steps
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length


class DecodeBatch:
    """The lent caches of ``states`` (one model), stacked, and the key masks that go with them."""

    @model_work()  # (moving the sessions' K/V into the stack is part of the batched step)
    def __init__(self, lm: LoadedModel, states: list[ConversationState]):
        if not states:
            raise ValueError("a batch needs at least one session")
        self.lm, self.states = lm, list(states)
        device = lm.device
        heads = lm.model.config.get_text_config().num_attention_heads
        owns = [state.cache for state in states]  # takes each back from an earlier batch first
        #: rows' own entries per layer, at the time they were lent
        self._own = [[int(layer.keys.shape[2]) for layer in own.layers] for own in owns]
        self._width: list[int] = []
        self._mask_buffers: list[torch.Tensor] = []
        layers = []
        for index in range(len(owns[0].layers)):
            rows = [own.layers[index] for own in owns]
            width = max(int(r.keys.shape[2]) for r in rows)
            capacity = width + GROW_STEPS
            first = rows[0].keys
            keys = first.new_zeros((len(rows), first.shape[1], capacity, first.shape[3]))
            values = rows[0].values.new_zeros((len(rows), first.shape[1], capacity, rows[0].values.shape[3]))
            mask = torch.zeros((len(rows), heads, 1, capacity), dtype=torch.float32, device=device)
            for b, (row, state) in enumerate(zip(rows, states, strict=True)):
                length = int(row.keys.shape[2])
                keys[b, :, :length] = row.keys[0]
                values[b, :, :length] = row.values[0]
                mask[b, :, :, length:width] = float("-inf")  # padding; columns from ``width`` on are steps
                bias = state.attention_bias.get(index)
                if bias is not None:  # [H_kv, n] on the first n entries, shared by each KV group's heads
                    n = min(int(bias.shape[1]), length)
                    mask[b, :, 0, :n] += bias[:, :n].float().repeat_interleave(heads // bias.shape[0], dim=0).to(device)
                # now held by the stack only (fresh empty tensors: a view would keep the old storage alive)
                row.keys = row.keys.new_empty((1, row.keys.shape[1], 0, row.keys.shape[3]))
                row.values = row.values.new_empty((1, row.values.shape[1], 0, row.values.shape[3]))
            layers.append(_StackLayer(keys, values, width))
            self._width.append(width)
            self._mask_buffers.append(mask)
        self.cache = DynamicCache()
        self.cache.layers = layers
        #: The rows' linear-attention states, stacked (hybrid models).
        self.linear = LinearStates.stacked([s._linear for s in states]) if lm.layer_kinds.hybrid else None
        self._owns = owns
        self.steps = 0
        self._returned: set[int] = set()
        self._next = [state.next_pos for state in states]  # what each row's session should be at
        #: K and V bytes of one cache entry of one layer
        self.bytes_per_entry = 2 * layers[0]._keys[0, :, 0].numel() * layers[0]._keys.element_size()
        self._memories = self._stack_memories(len(layers))
        self._observing = self._observers()
        for state in states:
            state.lender = self

    def _stack_memories(self, num_layers: int) -> dict[int, RetainedLayer]:
        """Per layer, the rows' retained memories in one batch (zeros, zero gate, for rows without)."""
        stacked = {}
        for index in range(num_layers):
            rows = [s.extension.memory(index) if s.extension is not None else None for s in self.states]
            present = [m for m in rows if m is not None]
            if not present:
                continue
            like = present[0]

            def part(name: str, like=like, rows=rows) -> torch.Tensor:
                zero = torch.zeros_like(getattr(like, name))
                return torch.cat([getattr(m, name) if m is not None else zero for m in rows])

            stacked[index] = RetainedLayer(part("state"), part("normalizer"), part("gate"))
        return stacked

    def _observers(self) -> dict:
        """Per observed layer, one callback that hands each observing row its own columns (built
        once: it reads the rows' widths and the step count when called)."""
        wanted: dict[int, list[tuple[int, object]]] = {}
        for b, state in enumerate(self.states):
            if state.extension is not None:
                for layer, observer in state.extension.observers().items():
                    wanted.setdefault(layer, []).append((b, observer))

        def for_layer(layer: int, rows: list[tuple[int, object]]):
            def observe(query, key, mask, scaling) -> None:
                for b, observer in rows:  # the row's own entries, then its steps (this one included)
                    own, width = self._own[b][layer], self._width[layer]
                    columns = torch.cat([torch.arange(own), torch.arange(width, width + self.steps + 1)])
                    row_mask = None if mask is None else mask[b : b + 1]  # hides the padding
                    observer(query[b : b + 1], key[b : b + 1], row_mask, scaling, columns=columns.to(key.device))

            return observe

        return {layer: for_layer(layer, rows) for layer, rows in wanted.items()}

    @property
    def size(self) -> int:
        return len(self.states)

    def holds(self, states: list[ConversationState]) -> bool:
        """Whether this batch is exactly ``states``, in order, all still lent to it and none fed
        or rolled back outside it (else it needs rebuilding)."""
        return (
            not self._returned
            and len(states) == len(self.states)
            and all(a is b and a.next_pos == n for a, b, n in zip(states, self.states, self._next, strict=True))
        )

    def lengths_of(self, state: ConversationState) -> list[int]:
        b = self._row(state)
        return [own + self.steps for own in self._own[b]]

    def _row(self, state: ConversationState) -> int:
        for b, held in enumerate(self.states):
            if held is state:
                return b
        raise KeyError("this session is not in the batch")

    @model_work()
    def give_back(self, state: ConversationState) -> None:
        """Return ``state``'s K/V to its own cache: its entries, then the steps it took here."""
        b = self._row(state)
        state.lender = None
        self._returned.add(b)
        if self.linear is not None and state._linear is not None:
            self.linear.row(b, state._linear)
        for own, layer, length, width in zip(
            self._owns[b].layers, self.cache.layers, self._own[b], self._width, strict=True
        ):
            own.keys = torch.cat(
                [layer._keys[b : b + 1, :, :length], layer._keys[b : b + 1, :, width : width + self.steps]], dim=2
            )
            own.values = torch.cat(
                [layer._values[b : b + 1, :, :length], layer._values[b : b + 1, :, width : width + self.steps]], dim=2
            )

    def release(self) -> None:
        """Give every row still lent back (the batch is done)."""
        for b, state in enumerate(self.states):
            if b not in self._returned and state.lender is self:
                self.give_back(state)

    @torch.inference_mode()
    @model_work()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed ``tokens[b]`` to row b at its session's next position; the logits [B, vocab]."""
        if len(tokens) != self.size:
            raise ValueError(f"{len(tokens)} tokens for {self.size} rows")
        if self._returned:
            raise RuntimeError("a session left this batch: build a new one")
        device, adapter = self.lm.device, self.lm.adapter
        positions = torch.cat([adapter.text_positions(s.next_pos, 1, s.rope_delta) for s in self.states], dim=-2).to(
            device
        )  # [3, B, 1] (M-RoPE) or [B, 1]
        masks = {}
        for index, layer in enumerate(self.cache.layers):
            layer.reserve(1)
            if self._mask_buffers[index].shape[-1] < layer._keys.shape[2]:  # the stack grew: so does the mask
                grown = self._mask_buffers[index].new_zeros(
                    (*self._mask_buffers[index].shape[:3], layer._keys.shape[2])
                )
                grown[..., : self._mask_buffers[index].shape[-1]] = self._mask_buffers[index]
                self._mask_buffers[index] = grown
            masks[index] = self._mask_buffers[index][..., : layer.length + 1]
        with row_masks(masks), retained_state(self._memories), decode_observers(self._observing):
            out = self.lm.model(
                input_ids=torch.tensor(tokens, device=device).view(self.size, 1),
                position_ids=positions,
                past_key_values=self.cache if self.linear is None else self.linear.model_cache(self.cache),
                use_cache=True,
                logits_to_keep=1,
            )
        self.steps += 1
        for b, (state, token) in enumerate(zip(self.states, tokens, strict=True)):
            state.next_pos += 1
            state.token_ids.append(token)
            self._next[b] = state.next_pos
        return out.logits[:, -1].float()
