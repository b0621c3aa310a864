"""The training script runs both stages, and writes a checkpoint that loads; the frame probe reads
the right targets from the scenes."""

from __future__ import annotations

import torch

from videoqa.worker.lab.suite import COLORS, SHAPES, build
from videoqa.worker.lab.train import FrameProbe
from videoqa.worker.lab.train import main as train_main
from videoqa.worker.model.loader import load_model


def test_train_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--vision-steps", "2", "--steps", "2", "--batch", "2", "--frames", "8"]
    assert train_main([*args, "--eval-every", "2", "--eval-count", "2", "--size", "56"]) == 0
    log = capsys.readouterr().out
    assert "vision step" not in log  # logged every 50 steps only
    assert "qa step 2 validation overall" in log and "saved" in log
    lm = load_model(str(out))
    assert lm.family == "qwen2_vl" and lm.num_layers == 4
    assert not any("probe" in name for name in lm.model.state_dict())


def test_frame_probe_targets_and_shapes():
    scene, *_ = build("needle", 0, 8)
    probe = FrameProbe(hidden=16, frames_per_group=2)
    colors, shapes = probe.targets([scene])
    assert colors.shape == shapes.shape == (4, 2)
    for frame, item in enumerate(scene):
        color, shape = colors.flatten()[frame].item(), shapes.flatten()[frame].item()
        if item is None:
            assert (color, shape) == (len(COLORS), len(SHAPES))
        else:
            assert (list(COLORS)[color], SHAPES[shape]) == (item.color, item.shape)
    tokens = torch.randn(2 * 4 * 9, 16)  # two videos: 4 groups of 3x3 merged tokens each
    grids = torch.tensor([[4, 6, 6], [4, 6, 6]])
    color_logits, shape_logits = probe(tokens, grids, merge=2)
    assert color_logits.shape == (8, 2, len(COLORS) + 1) and shape_logits.shape == (8, 2, len(SHAPES) + 1)
    loss = probe.loss(tokens, grids, 2, [scene, scene])
    loss.backward()
    assert loss.item() > 0 and probe.linear.weight.grad.abs().sum() > 0
