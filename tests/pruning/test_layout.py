"""Frame spans come from the processor output, for every family (never hard-coded)."""

from __future__ import annotations

import math

import pytest

from tests.conftest import FAMILIES
from tests.pruning.conftest import media


@pytest.mark.parametrize("frames", [4, 5, 8])
@pytest.mark.parametrize("model_id", FAMILIES)
def test_spans_tile_exactly_the_visual_tokens(tiny_model, model_id, frames):
    lm = tiny_model(model_id)
    prompt = lm.adapter.prepare(media(frames), "what?")
    layout = prompt.layout
    ids = prompt.inputs["input_ids"][0]
    visual = (ids == lm.adapter.video_token_id).nonzero().flatten().tolist()
    assert visual[0] == layout.visual_start and visual[-1] + 1 == layout.visual_end
    if lm.family.startswith("qwen3"):  # each temporal patch after its time: text between the spans
        between = [(a, b) for (_, a), (b, _) in zip(layout.frame_spans, layout.frame_spans[1:], strict=False)]
        assert between and all(b > a for a, b in between)
        assert all(ids[a:b].ne(lm.adapter.video_token_id).all() for a, b in between)
    else:
        assert visual == list(range(layout.visual_start, layout.visual_end))
    covered = [i for start, end in layout.frame_spans for i in range(start, end)]
    assert covered == visual, "spans are contiguous, ordered and cover every visual token once"
    if lm.family.startswith("qwen"):
        grid_t = int(prompt.inputs["video_grid_thw"][0, 0])
        assert layout.frames_per_span == 2 and len(layout.frame_spans) == grid_t == math.ceil(frames / 2)
        assert len({end - start for start, end in layout.frame_spans}) == 1
    else:
        assert layout.frames_per_span == 1 and len(layout.frame_spans) == frames
        sizes = [end - start for start, end in layout.frame_spans]
        assert sizes[:-1] == [sizes[0]] * (frames - 1) and sizes[-1] == sizes[0] + 1  # + the newline token
