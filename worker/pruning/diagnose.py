"""``videoqa diagnose``: the "attention myopia" picture for a video and a model, run locally.

Prints and plots (PNG):

1. the question→frame attention per frame span, per layer: ``A_m = Σ_{j∈I_m} c_j / n_m`` with
   ``c`` the head-averaged mean attention of the question's tokens, normalised to sum to 1 over
   frames, plus the fitted exponential decay rate λ per layer (``log A_m ≈ a − λ·m``);
2. how many visual tokens each method keeps per frame span at a budget (summed over layers and
   KV heads, as a share of what it keeps), which shows whether later frames are starved.

Usage: ``videoqa diagnose VIDEO [--question Q] [--model ID] [--frames N] [--budget F]
[--methods a,b,...] [--out myopia.png] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

DEFAULT_METHODS = ("snapkv", "h2o", "fastv", "das")


@dataclass
class Diagnosis:
    model: str
    frames: int
    budget: float
    #: [layer][frame span] share of question→frame attention per token.
    attention: list[list[float]]
    #: Fitted decay rate per layer (positive: later frames get less).
    decay: list[float]
    #: method → share of kept visual tokens per frame span.
    kept: dict[str, list[float]]


def frame_attention(lm, prompt) -> torch.Tensor:
    """[layers, M]: mean question→token attention per frame span, normalised over spans."""
    from videoqa.worker.model.attention import Recording, RowGroup, recording
    from videoqa.worker.model.generate import ModelRunner

    layout = prompt.layout
    window = torch.arange(layout.visual_end, layout.prompt_length)
    record = Recording([RowGroup("window", window)], key_limit=layout.prompt_length)
    with recording(record):
        ModelRunner(lm).prefill(prompt)
    rows = []
    for layer in range(lm.num_layers):
        c = record.stats[layer]["window"].mean().mean(dim=0)  # head average, [S]
        per_frame = torch.stack([c[s:e].mean() for s, e in layout.frame_spans])
        rows.append(per_frame / per_frame.sum().clamp(min=1e-30))
    return torch.stack(rows).cpu()


def fitted_decay(shares: torch.Tensor) -> list[float]:
    """λ per layer from a least-squares fit of ``log share ≈ a − λ·m``."""
    m = torch.arange(shares.shape[1], dtype=torch.float32)
    centred = m - m.mean()
    if float(centred @ centred) == 0:
        return [0.0] * shares.shape[0]
    logs = torch.log(shares.clamp(min=1e-30))
    slope = (logs - logs.mean(dim=1, keepdim=True)) @ centred / (centred @ centred)
    return [float(-s) for s in slope]


def kept_per_frame(lm, media, question: str, method: str, budget: float) -> list[float]:
    """Share of a method's kept visual tokens in each frame span (question-aware prefill)."""
    from videoqa.worker.model.generate import ModelRunner
    from videoqa.worker.pruning.pipeline import PrunedPrefill
    from videoqa.worker.pruning.registry import build_method
    from videoqa.worker.types import PruningSpec

    pipeline = PrunedPrefill(ModelRunner(lm), build_method(PruningSpec(method, {}, budget)), question_aware=True)
    state, _ = pipeline.prefill(lm.adapter.prepare(media, question))
    counts = torch.tensor(pipeline.prune(state).kept_per_frame, dtype=torch.float32)
    return (counts / counts.sum().clamp(min=1)).tolist()


def diagnose(lm, media, question: str, methods: list[str], budget: float) -> Diagnosis:
    shares = frame_attention(lm, lm.adapter.prepare(media, question))
    return Diagnosis(
        model=lm.model_id,
        frames=len(media.indices),
        budget=budget,
        attention=shares.tolist(),
        decay=fitted_decay(shares),
        kept={name: kept_per_frame(lm, media, question, name, budget) for name in methods},
    )


def plot(diagnosis: Diagnosis, out: Path) -> Path:
    """Two panels: attention share per frame span (one line per layer), kept share per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), constrained_layout=True)
    spans = list(range(1, len(diagnosis.attention[0]) + 1))
    for layer, row in enumerate(diagnosis.attention):
        left.plot(spans, row, marker="o", alpha=0.6, label=f"layer {layer} (λ={diagnosis.decay[layer]:.2f})")
    mean = torch.tensor(diagnosis.attention).mean(dim=0).tolist()
    left.plot(spans, mean, color="black", linewidth=2.5, label="mean over layers")
    left.set(
        title="question→frame attention per frame span",
        xlabel="frame span (time →)",
        ylabel="share of attention per token",
    )
    left.legend(fontsize=7, ncol=2)
    width = 0.8 / max(1, len(diagnosis.kept))
    for i, (name, shares) in enumerate(diagnosis.kept.items()):
        right.bar([s + (i - (len(diagnosis.kept) - 1) / 2) * width for s in spans], shares, width, label=name)
    right.axhline(1 / len(spans), color="grey", linestyle=":", label="uniform")
    right.set(
        title=f"kept visual tokens per frame span at budget {diagnosis.budget:.0%}",
        xlabel="frame span (time →)",
        ylabel="share of kept tokens",
    )
    right.legend(fontsize=8)
    fig.suptitle(f"attention myopia: {diagnosis.model}, {diagnosis.frames} frames")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def report(diagnosis: Diagnosis) -> str:
    spans = len(diagnosis.attention[0])
    lines = [f"question→frame attention share per frame span ({diagnosis.model}, {diagnosis.frames} frames)"]
    lines.append("layer  λ      " + " ".join(f"{m + 1:>6}" for m in range(spans)))
    for layer, row in enumerate(diagnosis.attention):
        lines.append(f"{layer:>5}  {diagnosis.decay[layer]:+.2f}  " + " ".join(f"{x:6.3f}" for x in row))
    lines.append(f"kept visual tokens per frame span at budget {diagnosis.budget:.0%} (share)")
    for name, shares in diagnosis.kept.items():
        lines.append(f"{name:>13}  " + " ".join(f"{x:6.3f}" for x in shares))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "diagnose":
        args = args[1:]
    parser = argparse.ArgumentParser(prog="videoqa diagnose", description=__doc__.split("\n\n")[0])
    parser.add_argument("video", type=Path)
    parser.add_argument("--question", default="What happens in the last frames of the video?")
    parser.add_argument("--model", default="videoqa-demo")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--max-resolution", type=int, default=448)
    parser.add_argument("--budget", type=float, default=0.2)
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("myopia.png"))
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    opts = parser.parse_args(args)

    from videoqa.worker.model.loader import load_model
    from videoqa.worker.types import MediaKind, SamplingSpec
    from videoqa.worker.video.decode import MediaDecoder

    lm = load_model(opts.model, device=opts.device)
    spec = SamplingSpec(num_frames=opts.frames, max_frames=opts.frames, max_resolution=opts.max_resolution)
    with MediaDecoder() as decoder:
        media = decoder.decode(MediaKind.VIDEO, opts.video.read_bytes(), spec)
    result = diagnose(lm, media, opts.question, [m for m in opts.methods.split(",") if m], opts.budget)
    png = plot(result, opts.out)
    print(json.dumps(asdict(result)) if opts.json else report(result))
    print(f"wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
