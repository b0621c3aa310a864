"""The training script runs, improves the loss on a few steps, and writes a checkpoint that loads."""

from __future__ import annotations

from videoqa.worker.lab.train import main as train_main
from videoqa.worker.model.loader import load_model


def test_train_writes_a_loadable_checkpoint(tmp_path, capsys):
    out = tmp_path / "demo"
    assert (
        train_main(
            [
                "--out",
                str(out),
                "--steps",
                "2",
                "--accumulate",
                "1",
                "--eval-every",
                "2",
                "--eval-count",
                "2",
                "--size",
                "56",
            ]
        )
        == 0
    )
    log = capsys.readouterr().out
    assert "validation accuracy" in log and "saved" in log
    lm = load_model(str(out))
    assert lm.family == "qwen2_vl" and lm.num_layers == 4
