"""Peer comparison: our ``snapkv`` and ``das`` against NVIDIA kvpress's ``SnapKVPress``, plus the
physical floor of a decode step, measured side by side in one run.

kvpress needs transformers < 5.3 and the project runs 5.23, so kvpress lives in its own virtual
environment (default ``.bench/kvpress-venv``, made on first use: ``python3 -m venv``, then the same
pinned torch as ours, ``transformers>=5.0,<5.3``, ``kvpress==0.5.5``, torchvision, pillow, numpy,
safetensors, tokenizers; videoqa is not installed there). This script runs in our venv and starts
itself a second time in the kvpress venv as a worker (``--worker``, JSON lines over stdin/stdout),
so the repetitions of both stacks interleave in one run.

Same model: both stacks load one directory written by ``save_pretrained`` (the first demo
checkpoint, Qwen2-VL, read from git history; or a random-weight config built by
``videoqa.worker.model.tiny`` and saved to a temporary directory) with ``from_pretrained``. Same
context: one synthetic suite video (frames as an array, handed to both processors identically)
and its question; the script checks that both
sides produce the same ``input_ids``, ``video_grid_thw``, ``pixel_values_videos`` and M-RoPE
position ids, and stops if they differ.

kvpress and Qwen2-VL: kvpress hooks ``model.model.language_model.layers``, but
``SnapKVPress.compute_window_attention`` applies 1-D RoPE to the window queries using
``position_embeddings``; Qwen2-VL passes M-RoPE cos/sin of shape (3, batch, seq, dim), so the
unmodified press fails with a shape error under sdpa ("The size of tensor a (W) must match the size
of tensor b (L)"). Two kvpress configurations are therefore run, both with kvpress's own scoring,
top-k and gather code:

- ``kvpress-snapkv``: the unmodified ``SnapKVPress`` with the text model on eager attention during
  the prefill, so the press reads the model's own attention weights (``attentions[..., -w:, :-w]``,
  correct M-RoPE) instead of recomputing them; back to sdpa for decoding.
- ``kvpress-snapkv-mrope``: sdpa throughout, ``compute_window_attention`` given the M-RoPE cos/sin
  merged per ``mrope_section`` (what ``apply_multimodal_rotary_pos_emb`` does), a four-line
  adaptation. Its scores equal the eager ones to ~1e-8 (checked: same kept sets).

Budgets: ours is the fraction of *visual* tokens kept (text always kept); kvpress's
``compression_ratio`` is the fraction of *all* context tokens removed (its observation window, the
last ``window_size`` tokens, always kept). The ratio is chosen so that both caches end with the
same number of entries per layer; both numbers are reported. kvpress's window is set to the text
after the video (the question and the assistant prefix), the rows our ``snapkv`` window uses.

Decoding on the kvpress side follows kvpress's pipeline (greedy, one token per forward, explicit
``position_ids``), with M-RoPE positions continuing from the *unpruned* context length plus the
rope delta, as ``ModelRunner.feed`` does on ours. A fixed number of new tokens is decoded for timing
(end-of-turn ignored); agreement is computed on the greedy tokens up to the first end-of-turn.

    python bench/kvpress_compare.py                       # demo checkpoint + kv-heavy-small, CPU
    python bench/kvpress_compare.py --quick --kvpress auto  # seconds; kvpress half only if its venv exists
    python bench/kvpress_compare.py --setup-only          # just build the kvpress venv
    python bench/kvpress_compare.py --device cuda:0 --dtype bfloat16 --model kv-heavy-small

Writes JSON (``--json``) and markdown (``--markdown``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / ".bench" / "kvpress-venv"
KVPRESS_SPEC = "kvpress==0.5.5"
TRANSFORMERS_SPEC = "transformers>=5.0,<5.3"
#: Models by name: a trained checkpoint (real answers) or a tiny.TinySpec's arguments (random
#: weights, built and saved to a temporary directory), frame side, frames. kvpress's Qwen2-VL
#: class needs a Qwen2-VL checkpoint: the first demo model (suite v1), read from the commit that
#: last shipped it (the demo model is Qwen3-VL since 0.2.0), so a clone with its history is needed.
MODELS = {
    "videoqa-demo-v1": {
        "checkpoint": "worker/model/demo",
        "commit": "41fb5f4",
        "size": 112,
        "frames": "32",
        "samples": 12,
    },
    # As bench/decode.py's kv-heavy-small: multi-head attention, so KV reads dominate decode.
    "kv-heavy-small": {
        "spec": dict(family="qwen2_vl", layers=2, hidden=512, heads=8, kv_heads=8, intermediate=1024),
        "size": 224,
        "frames": "16,32,64",
        "samples": 4,
    },
    "tiny-qwen2-vl": {"spec": dict(family="qwen2_vl"), "size": 112, "frames": "4", "samples": 1},
}
FAMILIES = ("needle", "retrieval", "ordering", "counting", "state_change", "last_frames")


# --------------------------------------------------------------------------------------------
# shared helpers (pure: used by both processes and by the tests)


def kvpress_ratio(context: int, kept: int) -> float:
    """kvpress ``compression_ratio`` under which ``compute_n_kept(context, ratio)`` == ``kept``
    (kvpress keeps ``max(1, int(context · (1 − ratio)))``)."""
    if not 1 <= kept <= context:
        raise ValueError(f"cannot keep {kept} of {context}")
    ratio = 1.0 - (kept + 0.5) / context
    if max(1, int(context * (1 - ratio))) != kept:  # float edge: nudge
        ratio = 1.0 - (kept + 0.25) / context
    return max(0.0, ratio)


def until_eos(tokens: list[int], eos: set[int]) -> list[int]:
    """Tokens up to and including the first end-of-turn token."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[: i + 1]
    return list(tokens)


def agreement(a: list[int], b: list[int]) -> float:
    """Position-wise token agreement over the longer sequence (1.0: identical)."""
    n = max(len(a), len(b))
    return sum(x == y for x, y in zip(a, b, strict=False)) / n if n else 1.0


def first_divergence(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def jaccard(a: set[int], b: set[int]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def run_record(prefill, step_seconds, entries, kv_bytes, tokens, gpu_base) -> dict:
    """One side's timed run, as both sides report it (``gpu_base``: CUDA bytes before, or None)."""
    return {
        "prefill_seconds": prefill,
        "step_seconds": step_seconds,
        "cache_entries": entries,
        "kv_bytes": kv_bytes,
        "tokens": tokens,
        "peak_gpu_bytes": None if gpu_base is None else torch.cuda.max_memory_allocated() - gpu_base,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def install_tv_shim() -> None:
    """The PyPI torchvision wheel is a CUDA build whose compiled ops fail to load on a ``+cpu``
    torch; declare the two ops it registers fakes for so ``import torchvision`` works (as
    ``videoqa.worker.model.tv_shim`` does; repeated here: the kvpress venv has no videoqa)."""
    import importlib.util

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    try:
        torch.ops.load_library(os.path.join(next(iter(spec.submodule_search_locations)), "_C.so"))
    except (OSError, ImportError, RuntimeError):
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        install_tv_shim.library = lib  # keep it alive


# --------------------------------------------------------------------------------------------
# the kvpress side (runs in the kvpress venv: torch, transformers < 5.3, kvpress; no videoqa)


class KvpressWorker:
    """Holds the model and the context; answers one request per call."""

    def __init__(self) -> None:
        install_tv_shim()
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        import logging

        logging.getLogger("kvpress").setLevel(logging.ERROR)  # "Model ... not tested" on every press
        self.model = self.processor = self.inputs = None

    def load(self, model_dir: str, dtype: str, device: str, threads: int) -> dict:
        import kvpress
        import transformers
        from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

        torch.set_num_threads(threads)
        self.device = device
        self.processor = AutoProcessor.from_pretrained(model_dir)
        self.model = Qwen2VLForConditionalGeneration.from_pretrained(
            model_dir, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        ).eval()
        self.model.to(device)
        return {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "kvpress": getattr(kvpress, "__version__", None) or _dist_version("kvpress"),
            "model_class": type(self.model).__name__,
        }

    def context(self, frames_path: str, question: str, fps: float, out_path: str, positions_path: str) -> dict:
        from transformers.video_utils import VideoMetadata

        frames = np.load(frames_path)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        count, height, width = frames.shape[:3]
        metadata = VideoMetadata(
            total_num_frames=count,
            fps=fps,
            frames_indices=list(range(count)),
            width=width,
            height=height,
            duration=count / fps,
        )
        inputs = dict(
            self.processor(
                text=[text],
                videos=[frames],
                return_tensors="pt",
                videos_kwargs={"video_metadata": [metadata], "do_sample_frames": False},
            )
        )
        own, _ = self.model.model.get_rope_index(
            inputs["input_ids"], video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"]
        )
        # The driver's M-RoPE positions are used (the same context on both sides); this
        # transformers' own get_rope_index is reported beside them (see the module docstring).
        positions = torch.from_numpy(np.load(positions_path))
        length = int(inputs["input_ids"].shape[1])
        self.rope_delta = int(positions[:, 0, -1].max()) + 1 - length
        self.positions = positions
        self.inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        np.savez(
            out_path,
            input_ids=inputs["input_ids"].numpy(),
            video_grid_thw=inputs["video_grid_thw"].numpy(),
            pixel_values_videos=inputs["pixel_values_videos"].float().numpy(),
            position_ids=own.numpy(),
        )
        return {"length": length, "rope_delta": self.rope_delta}

    def _press(self, variant: str, ratio: float, window: int, kernel: int):
        from kvpress import SnapKVPress

        class Recorded(SnapKVPress):
            """kvpress's SnapKVPress; records its scores to recover which positions it kept."""

            def score(self, module, *args, **kwargs):
                scores = super().score(module, *args, **kwargs)
                self.scores[module.layer_idx] = scores.detach().float().cpu()
                return scores

        class MRope(Recorded):
            """The window-attention recomputation given M-RoPE cos/sin merged per mrope_section."""

            @staticmethod
            def compute_window_attention(module, hidden_states, keys, window_size, position_embeddings):
                cos, sin = position_embeddings  # (3, batch, seq, dim): one per M-RoPE axis
                if cos.dim() == 4:
                    section = list(module.config.rope_parameters["mrope_section"]) * 2
                    cos = torch.cat([c[i % 3] for i, c in enumerate(cos.split(section, dim=-1))], dim=-1)
                    sin = torch.cat([s[i % 3] for i, s in enumerate(sin.split(section, dim=-1))], dim=-1)
                return SnapKVPress.compute_window_attention(module, hidden_states, keys, window_size, (cos, sin))

        cls = {"snapkv": Recorded, "snapkv-mrope": MRope, "snapkv-plain": SnapKVPress}[variant]
        press = cls(compression_ratio=ratio, window_size=window, kernel_size=kernel)
        press.scores = {}
        return press

    def run(
        self,
        variant: str,
        steps: int,
        ratio: float = 0.0,
        window: int = 64,
        kernel: int = 5,
        kept: bool = False,
        logits: bool = False,
    ) -> dict:
        """Prefill (+ compression), then ``steps`` greedy decode steps; times both."""
        import contextlib

        from transformers import DynamicCache

        model, device = self.model, self.device
        press = None if variant == "full" else self._press(variant, ratio, window, kernel)
        text_config = model.config.get_text_config()
        eager = variant == "snapkv"  # the unmodified press reads the model's own attention weights
        cuda = device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        cache = DynamicCache()
        with torch.inference_mode():
            text_config._attn_implementation = "eager" if eager else "sdpa"
            try:
                sync(device)
                start = time.perf_counter()
                with press(model) if press is not None else contextlib.nullcontext():
                    out = model(
                        **self.inputs,
                        position_ids=self.positions.to(device),
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                    )
                first_logits = out.logits[0, -1].float()
                token = int(torch.argmax(first_logits))
                sync(device)
                prefill = time.perf_counter() - start
            finally:
                text_config._attn_implementation = "sdpa"
            entries = [int(layer.keys.shape[2]) for layer in cache.layers]
            kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
            tokens, next_pos = [token], int(self.inputs["input_ids"].shape[1])
            step_seconds = []
            sync(device)
            for _ in range(steps):  # kvpress's generate_answer loop, with M-RoPE positions
                start = time.perf_counter()
                position = torch.full((3, 1, 1), next_pos + self.rope_delta, dtype=torch.long, device=device)
                out = model(
                    input_ids=torch.tensor([[token]], device=device),
                    position_ids=position,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
                token = int(torch.argmax(out.logits[0, -1]))  # to the host: the step is done
                step_seconds.append(time.perf_counter() - start)
                tokens.append(token)
                next_pos += 1
        result = run_record(prefill, step_seconds, entries, kv_bytes, tokens, base if cuda else None)
        if kept and press is not None:
            result["scores"] = {str(layer): s[0].tolist() for layer, s in press.scores.items()}
            result["kept"] = {
                str(layer): [sorted(row.tolist()) for row in s[0].topk(entries[layer], dim=-1).indices]
                for layer, s in press.scores.items()
            }
        if logits:
            result["first_logits"] = first_logits.cpu().tolist()
        return result

    def probe_plain(self, window: int, ratio: float) -> dict:
        """Whether kvpress's unmodified SnapKVPress runs on this model under sdpa."""
        try:
            self.run("snapkv-plain", 0, ratio, window)
            return {"runs": True}
        except Exception as error:
            return {"runs": False, "error": f"{type(error).__name__}: {error}"[:400]}


def _dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def worker_main() -> int:
    """JSON-lines server: one request per line on stdin, one reply per line on stdout."""
    import traceback

    reply_to = sys.stdout
    sys.stdout = sys.stderr  # library prints must not corrupt the protocol
    worker = KvpressWorker()
    for line in sys.stdin:
        request = json.loads(line)
        command = request.pop("cmd")
        if command == "quit":
            break
        try:
            reply = {"ok": True, **getattr(worker, command)(**request)}
        except Exception as error:
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        reply_to.write(json.dumps(reply) + "\n")
        reply_to.flush()
    return 0


# --------------------------------------------------------------------------------------------
# the driver (runs in our venv)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_ready(venv: Path) -> bool:
    return (venv / ".kvpress-ready").exists() and venv_python(venv).exists()


def ensure_venv(venv: Path, torch_spec: str) -> Path:
    """Create the kvpress virtual environment unless it is there (a few minutes, once)."""
    python = venv_python(venv)
    if venv_ready(venv):
        return python
    base = shutil.which("python3") or sys.executable
    print(f"creating the kvpress venv in {venv} (once)", file=sys.stderr, flush=True)
    if not python.exists():
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    # torch first and pinned (an unpinned torch would resolve to GBs of CUDA wheels), then the rest
    # with the same pin so that nothing moves it.
    subprocess.run([*pip, torch_spec], check=True)
    torchvision = _dist_version("torchvision")
    subprocess.run(
        [
            *pip,
            torch_spec,
            TRANSFORMERS_SPEC,
            KVPRESS_SPEC,
            f"torchvision=={torchvision}" if torchvision else "torchvision",
            "pillow",
            "numpy",
            "safetensors",
            "tokenizers",
        ],
        check=True,
    )
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    (venv / ".kvpress-ready").write_text(freeze)
    return python


class Peer:
    """The kvpress worker process."""

    def __init__(self, python: Path, threads: int):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [str(python), str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),  # so that the checkout's videoqa is not importable there
        )

    def __call__(self, cmd: str, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the kvpress worker died (exit {self.proc.wait()})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise RuntimeError(f"kvpress worker: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


def memory_bandwidth(mib: int, reps: int = 7) -> float:
    """Bytes/s of a large tensor copy (bytes read + written), median of ``reps``."""
    n = mib * (1 << 20) // 4
    src, dst = torch.rand(n), torch.empty(n)
    dst.copy_(src)  # touch both
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    return 2 * src.nbytes / statistics.median(times)


def decode_weight_bytes(lm) -> int:
    """Weight bytes one decode step reads: the language model without its embedding table (one
    row is read), plus the LM head."""
    language = lm.model.model.language_model
    total = sum(p.numel() * p.element_size() for p in language.parameters())
    embed = language.embed_tokens.weight
    total -= embed.numel() * embed.element_size() - embed.shape[1] * embed.element_size()
    return total + sum(p.numel() * p.element_size() for p in lm.model.lm_head.parameters())


class Ours:
    """Our side: PrunedPrefill + ModelRunner.feed, what the worker runs for a session."""

    def __init__(self, lm, prompt, device: str):
        from videoqa.worker.model.generate import ModelRunner

        self.lm, self.prompt, self.device = lm, prompt, device
        self.gen = ModelRunner(lm)

    def run(self, method: str, budget: float, steps: int, kept: bool = False, logits: bool = False) -> dict:
        from videoqa.worker.pruning.pipeline import PrunedPrefill
        from videoqa.worker.pruning.registry import build_method
        from videoqa.worker.types import PruningSpec

        cuda = self.device.startswith("cuda")
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        pruning = build_method(PruningSpec(method, {}, budget))
        masks: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        if kept and method != "full":
            select, score = pruning.select, pruning.score

            def recording_score(layer, ctx):
                scores.append(score(layer, ctx).float().cpu())
                return scores[-1]

            pruning.score = recording_score

            def recording_select(scores, keep):
                mask = select(scores, keep)
                masks.append(mask.clone())
                return mask

            pruning.select = recording_select
        pipeline = PrunedPrefill(self.gen, pruning, question_aware=True)
        sync(self.device)
        start = time.perf_counter()
        state, first_logits = pipeline.prefill(self.prompt)
        if method != "full":
            pipeline.prune(state)
        token = int(torch.argmax(first_logits))
        sync(self.device)
        prefill = time.perf_counter() - start
        entries, kv_bytes = list(state.cache_lengths), state.cache_bytes()
        tokens = [token]
        step_seconds = []
        sync(self.device)
        for _ in range(steps):
            start = time.perf_counter()
            token = int(torch.argmax(self.gen.feed(state, [token])))  # to the host: the step is done
            step_seconds.append(time.perf_counter() - start)
            tokens.append(token)
        result = run_record(prefill, step_seconds, entries, kv_bytes, tokens, base if cuda else None)
        if masks:
            layout = self.prompt.layout
            visual = torch.cat([torch.arange(s, e) for s, e in layout.frame_spans])
            heads = int(
                getattr(self.lm.text_config, "num_key_value_heads", 0) or self.lm.text_config.num_attention_heads
            )
            result["kept"] = {
                str(layer): [sorted(visual[row].tolist()) for row in mask.expand(heads, -1)]
                for layer, mask in enumerate(masks)
            }
            result["scores"] = {str(layer): row.tolist() for layer, row in enumerate(scores)}
        if logits:
            result["first_logits"] = first_logits.cpu().tolist()
        return result


def compare_inputs(prompt, peer_file: Path) -> dict:
    """Both processors must have built the same context; stop loudly if not."""
    theirs = np.load(peer_file)
    ours = prompt.inputs
    checks = {
        "input_ids": np.array_equal(ours["input_ids"].numpy(), theirs["input_ids"]),
        "video_grid_thw": np.array_equal(ours["video_grid_thw"].numpy(), theirs["video_grid_thw"]),
    }
    pixels = ours["pixel_values_videos"].float().numpy()
    same_shape = pixels.shape == theirs["pixel_values_videos"].shape
    diff = float(np.abs(pixels - theirs["pixel_values_videos"]).max()) if same_shape else float("inf")
    checks["pixel_values_videos"] = same_shape and diff == 0.0
    if not all(checks.values()):
        raise SystemExit(f"the two stacks built different inputs: {checks} (pixel max |diff| {diff:g})")
    # Positions: both sides use ours; whether the other transformers computes the same is reported.
    mine, own = prompt.position_ids.numpy(), theirs["position_ids"]
    after = prompt.layout.visual_end
    checks["own_position_ids_equal"] = bool(np.array_equal(mine, own))
    checks["first_text_position_after_video"] = {
        "ours": int(mine[0, 0, after]),
        "kvpress_side_own": int(own[0, 0, after]),
    }
    return {**checks, "pixel_max_abs_diff": diff}


def kept_comparison(ours_scores: dict, theirs: dict, layout) -> dict:
    """Per layer and KV head, ours against kvpress's kept positions.

    As kept: Jaccard of the kept *visual* positions, the share of ours that kvpress also kept, and
    how many text positions kvpress evicted (ours keeps all text, so kvpress keeps that many more
    visual ones). Same rule: kvpress's own scores, but selected our way (the top ``slots`` visual
    positions, text kept): isolates the scoring from the selection rule."""
    visual = set(range(layout.visual_start, layout.visual_end))
    visual_idx = torch.arange(layout.visual_start, layout.visual_end)
    text = layout.prompt_length - len(visual)
    as_kept, recall, evicted, same_rule = [], [], [], []
    for layer, rows in ours_scores["kept"].items():
        for head, (mine, other) in enumerate(zip(rows, theirs["kept"][layer], strict=True)):
            other_visual = set(other) & visual
            as_kept.append(jaccard(set(mine), other_visual))
            recall.append(len(set(mine) & other_visual) / max(len(mine), 1))
            evicted.append(text - (len(other) - len(other_visual)))
            if "scores" in theirs:
                scores = torch.tensor(theirs["scores"][layer][head])[visual_idx]
                order = torch.argsort(scores, descending=True, stable=True)[: len(mine)]
                same_rule.append(jaccard(set(mine), set(visual_idx[order].tolist())))
    result = {
        "visual_jaccard_mean": float(np.mean(as_kept)),
        "visual_jaccard_min": float(np.min(as_kept)),
        "ours_kept_by_kvpress": float(np.mean(recall)),
        "kvpress_text_evicted_mean": float(np.mean(evicted)),
        "rows": len(as_kept),
    }
    if "scores" in theirs and "scores" in ours_scores:
        # Score check: ours [rows, n_visual] against kvpress's visual columns, inside the visual span
        # and at its first/last two tokens (where kvpress's 5-wide pooling reaches into the text).
        inner, edge = [], []
        for layer, rows in ours_scores["scores"].items():
            mine = torch.tensor(rows)
            other = torch.tensor(theirs["scores"][layer])[:, visual_idx]
            diff = (mine.expand_as(other) - other).abs()
            inner.append(float(diff[:, 2:-2].max()))
            edge.append(float(torch.cat([diff[:, :2], diff[:, -2:]], dim=1).max()))
        result["score_max_diff_inside"] = max(inner)
        result["score_max_diff_edges"] = max(edge)
    if same_rule:
        result["same_rule_jaccard_mean"] = float(np.mean(same_rule))
        result["same_rule_jaccard_min"] = float(np.min(same_rule))
    return result


def suite_sample(family: str, seed: int, frames: int, size: int) -> tuple[np.ndarray, str, str]:
    from videoqa.lab import suite

    scene, question, answer, _, _ = suite.build(family, seed, frames)
    return suite.render(scene, size, seed), question, answer


def checkpoint_at(commit: str, folder: str, out: Path, repo: Path = ROOT) -> Path:
    """The files of ``folder`` as of ``commit`` of ``repo`` (this one), written to ``out``."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-tree", f"{commit}:{folder}"], capture_output=True, text=True)
    if listed.returncode != 0:
        raise SystemExit(f"{folder} at {commit} is not in this clone's history ({listed.stderr.strip()})")
    out.mkdir(parents=True, exist_ok=True)
    for line in listed.stdout.splitlines():
        kind, name = line.split()[1], line.split("\t", 1)[1]
        if kind == "blob":
            blob = ["git", "-C", str(repo), "show", f"{commit}:{folder}/{name}"]
            (out / name).write_bytes(subprocess.run(blob, capture_output=True, check=True).stdout)
    return out


def load_for(name: str, workdir: Path, args) -> tuple[str, object]:
    """The model directory both stacks load, and our LoadedModel of it."""
    from videoqa.worker.model import tiny
    from videoqa.worker.model.loader import load_model

    entry = MODELS[name]
    if "commit" in entry:
        directory = checkpoint_at(entry["commit"], entry["checkpoint"], workdir / name)
    elif "checkpoint" in entry:
        directory = ROOT / entry["checkpoint"]
    else:
        directory = workdir / name
        model, processor = tiny.build_from_spec(tiny.TinySpec(**entry["spec"]))
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
        del model
    return str(directory), load_model(str(directory), device=args.device, dtype=args.dtype)


def measure(name: str, count: int, lm, directory: str, peer: Peer | None, workdir: Path, args) -> dict:
    """One model at one frame count: every configuration, interleaved repetitions, medians."""
    from videoqa.worker.types import DecodedMedia

    size = args.size or MODELS[name]["size"]
    budgets = [float(b) for b in args.budgets.split(",") if b]
    eos = set(lm.eos_token_ids)
    samples = []
    for i in range(args.samples or MODELS[name]["samples"]):
        frames, question, answer = suite_sample(FAMILIES[i % len(FAMILIES)], 2_000_000 + i, count, size)
        samples.append((frames, question, answer))
    contexts = []
    for frames, question, answer in samples:
        media = DecodedMedia.from_array(frames)
        contexts.append(
            {
                "prompt": lm.adapter.prepare(media, question),
                "question": question,
                "answer": answer,
                "fps": media.sampled_fps,
            }
        )

    def peer_context(i: int) -> None:
        """Give the peer sample ``i`` (it holds one context at a time); both sides' inputs must match."""
        frames_path, out_path = workdir / "frames.npy", workdir / "peer_inputs.npz"
        positions_path = workdir / "positions.npy"
        np.save(frames_path, samples[i][0])
        context = contexts[i]
        np.save(positions_path, context["prompt"].position_ids.numpy())
        reply = peer(
            "context", frames_path=str(frames_path), question=context["question"], fps=context["fps"],
            out_path=str(out_path), positions_path=str(positions_path),
        )  # fmt: skip
        context["inputs_equal"] = compare_inputs(context["prompt"], out_path)
        if reply["rope_delta"] != context["prompt"].rope_delta:
            raise SystemExit(f"rope delta differs: ours {context['prompt'].rope_delta}, kvpress {reply['rope_delta']}")

    layout = contexts[0]["prompt"].layout
    n_visual, length = layout.num_visual_tokens, layout.prompt_length
    window = min(64, length - layout.visual_end)
    configs: list[tuple[str, str, float]] = [("ours", "full", 1.0), ("kvpress", "full", 1.0)]
    ratios = {}
    for budget in budgets:
        kept = (length - n_visual) + max(1, round(budget * n_visual))
        ratios[budget] = {"kept_entries": kept, "compression_ratio": kvpress_ratio(length, kept)}
        configs += [("ours", "snapkv", budget), ("ours", "das", budget)]
        if peer is not None:
            configs += [("kvpress", "snapkv-mrope", budget), ("kvpress", "snapkv", budget)]
    if peer is None:
        configs = [c for c in configs if c[0] == "ours"]

    def run(config, context, steps, **extra):
        stack, method, budget = config
        if stack == "ours":
            return context["ours"].run(method, budget, steps, **extra)
        if method != "full":
            extra.update(ratio=ratios[budget]["compression_ratio"], window=window, kernel=5)
        return peer("run", variant=method, steps=steps, **extra)

    # Agreement (untimed): greedy tokens per sample, kept sets on the first sample.
    agreement_runs: list[dict] = []
    plain = None
    for i, context in enumerate(contexts):
        context["ours"] = Ours(lm, context["prompt"], args.device)
        if peer is not None:
            peer_context(i)
        outputs = {}
        for config in configs:
            extra = {"kept": i == 0, "logits": i == 0 and config[1] == "full"}
            outputs[config] = run(config, context, args.greedy_limit, **extra)
        if peer is not None and i == 0 and budgets:
            plain = peer("probe_plain", window=window, ratio=ratios[budgets[0]]["compression_ratio"])
        agreement_runs.append(outputs)
    if peer is not None and len(contexts) > 1:  # back to the timed context
        peer_context(0)

    from videoqa.lab.sample import Sample, is_correct
    from videoqa.worker.types import MediaKind

    answers: dict[str, list] = {}
    for config in configs:
        key = label(config)
        answers[key] = []
        for context, outputs in zip(contexts, agreement_runs, strict=True):
            text = lm.tokenizer.decode(until_eos(outputs[config]["tokens"], eos), skip_special_tokens=True)
            sample = Sample("s", "f", context["question"], context["answer"], MediaKind.VIDEO, b"", count)
            answers[key].append({"text": text, "correct": is_correct(text, sample)})
    pairs = []
    for budget in budgets:
        for mine, other in [("snapkv", "snapkv-mrope"), ("snapkv", "snapkv"), ("das", "snapkv-mrope")]:
            a, b = ("ours", mine, budget), ("kvpress", other, budget)
            if b in configs:
                pairs.append((a, b))
        if ("kvpress", "snapkv", budget) in configs:
            pairs.append((("kvpress", "snapkv-mrope", budget), ("kvpress", "snapkv", budget)))
    pairs.append((("ours", "full", 1.0), ("kvpress", "full", 1.0)))
    comparisons = []
    for a, b in pairs:
        if a not in configs or b not in configs:
            continue
        greedy = [(until_eos(o[a]["tokens"], eos), until_eos(o[b]["tokens"], eos)) for o in agreement_runs]
        row = {
            "a": label(a),
            "b": label(b),
            "same_answer": sum(x == y for x, y in greedy) / len(greedy),
            "token_agreement": float(np.mean([agreement(x, y) for x, y in greedy])),
            "first_divergence_sample0": first_divergence(*greedy[0]),
        }
        first = agreement_runs[0]
        if "kept" in first[a] and "kept" in first[b]:
            if a[0] == "ours":
                row["kept"] = kept_comparison(first[a], first[b], layout)
            else:  # kvpress vs kvpress: the whole kept sets
                sets = [
                    jaccard(set(x), set(y))
                    for layer in first[a]["kept"]
                    for x, y in zip(first[a]["kept"][layer], first[b]["kept"][layer], strict=True)
                ]
                row["kept"] = {"jaccard_mean": float(np.mean(sets)), "jaccard_min": float(np.min(sets))}
        if "first_logits" in first[a] and "first_logits" in first[b]:
            row["first_logits_max_abs_diff"] = float(
                np.abs(np.array(first[a]["first_logits"]) - np.array(first[b]["first_logits"])).max()
            )
        comparisons.append(row)

    # Timing: interleaved repetitions on the first context, medians.
    timed: dict[tuple, list[dict]] = {c: [] for c in configs}
    for config in configs:  # warm-up
        run(config, contexts[0], min(args.steps, 4))
    for _ in range(args.reps):
        for config in configs:
            timed[config].append(run(config, contexts[0], args.steps))

    bandwidth = args.bandwidth
    weights = decode_weight_bytes(lm)
    per_entry = lm.kv_bytes_per_token // lm.num_layers  # one layer's K+V for one position
    rows = []
    for config in configs:
        reps = timed[config]
        entries = reps[0]["cache_entries"]
        # ms/token: per repetition the median step (robust to another process taking the core for
        # a moment), then the median over repetitions; the mean step is kept beside it.
        decode_ms = median([median(r["step_seconds"]) for r in reps]) * 1000
        mean_ms = median([float(np.mean(r["step_seconds"])) for r in reps]) * 1000
        # KV read per step: the cache as it grows over the timed steps (mean length), all layers.
        kv_read = (sum(entries) + len(entries) * (args.steps + 1) / 2) * per_entry
        floor_ms = (weights + kv_read) / bandwidth * 1000
        stack, method, budget = config
        rows.append(
            {
                "config": label(config),
                "stack": stack,
                "method": method,
                "budget": budget,
                "compression_ratio": ratios[budget]["compression_ratio"]
                if stack == "kvpress" and method != "full"
                else 0.0,
                "cache_entries": entries,
                "context": length,
                "kv_bytes": reps[0]["kv_bytes"],
                "prefill_ms": median([r["prefill_seconds"] for r in reps]) * 1000,
                "decode_ms_per_token": decode_ms,
                "decode_mean_ms_per_token": mean_ms,
                "decode_ms_reps": [median(r["step_seconds"]) * 1000 for r in reps],
                "decode_min_ms_per_token": min(min(r["step_seconds"]) for r in reps) * 1000,
                "prefill_ms_reps": [r["prefill_seconds"] * 1000 for r in reps],
                "peak_gpu_bytes": max((r["peak_gpu_bytes"] or 0) for r in reps)
                if args.device.startswith("cuda")
                else None,
                "floor_ms": floor_ms,
                "floor_bytes": weights + kv_read,
                "floor_fraction": floor_ms / decode_ms if decode_ms else None,
                "accuracy": float(np.mean([a["correct"] for a in answers[label(config)]])),
            }
        )
    by_label = {row["config"]: row for row in rows}
    targets = []
    for budget in budgets:
        reference = by_label.get(f"kvpress snapkv-mrope@{budget:g}")
        for method in ("snapkv", "das"):
            mine = by_label.get(f"ours {method}@{budget:g}")
            if reference and mine:
                ratio = mine["decode_ms_per_token"] / reference["decode_ms_per_token"]
                targets.append(
                    {"ours": mine["config"], "kvpress": reference["config"], "ratio": ratio, "met": ratio <= 1.3}
                )
    return {
        "frames": count,
        "frame_size": size,
        "context": length,
        "visual_tokens": n_visual,
        "window": window,
        "budgets": {f"{b:g}": v for b, v in ratios.items()},
        "question": contexts[0]["question"],
        "inputs_equal": contexts[0].get("inputs_equal"),
        "kvpress_unmodified_sdpa": plain,
        "weight_bytes_per_step": weights,
        "kv_bytes_per_entry_all_layers": per_entry * lm.num_layers,
        "rows": rows,
        "comparisons": comparisons,
        "answers": answers,
        "answer_reference": [c["answer"] for c in contexts],
        "targets": targets,
    }


def label(config: tuple[str, str, float]) -> str:
    stack, method, budget = config
    return f"{stack} {method}" if method == "full" else f"{stack} {method}@{budget:g}"


def markdown(result: dict) -> str:
    out = []
    for model in result["models"]:
        for run in model["runs"]:
            out.append(
                f"\n**{model['model']}** ({model['description']}), {run['frames']} frames at {run['frame_size']}², "
                f"context {run['context']} tokens ({run['visual_tokens']} visual), window {run['window']}, "
                f"{result['machine']['device']}, {model['dtype']}\n"
            )
            checks = run.get("inputs_equal")
            if checks:
                first = checks["first_text_position_after_video"]
                out.append(
                    "Inputs: `input_ids`, `video_grid_thw` and `pixel_values_videos` bit-identical on both sides; "
                    f"M-RoPE positions: ours on both (the kvpress side's own `get_rope_index` "
                    f"{'agrees' if checks['own_position_ids_equal'] else 'differs'}: first text position after "
                    f"the video {first['ours']} ours vs {first['kvpress_side_own']} there).\n"
                )
            plain = run.get("kvpress_unmodified_sdpa")
            if plain is not None:
                state = "runs" if plain["runs"] else f"fails: `{plain['error'][:160]}`"
                out.append(f"Unmodified `SnapKVPress` on this model under sdpa {state}.\n")
            out.append(
                "| config | kvpress ratio | cache entries / layer | KV bytes | prefill+compress (ms) | "
                "decode ms/token | vs kvpress snapkv | floor (ms) | floor / measured | accuracy |"
            )
            out.append("|---" * 10 + "|")
            rows = {r["config"]: r for r in run["rows"]}
            for row in run["rows"]:
                ref = (
                    rows.get(f"kvpress snapkv-mrope@{row['budget']:g}")
                    if row["method"] != "full"
                    else rows.get("kvpress full")
                )
                versus = f"{row['decode_ms_per_token'] / ref['decode_ms_per_token']:.2f}×" if ref else "—"
                ratio = (
                    f"{row['compression_ratio']:.4f}" if row["stack"] == "kvpress" and row["method"] != "full" else "—"
                )
                out.append(
                    f"| {row['config']} | {ratio} | {max(row['cache_entries'])} / {row['context']} | "
                    f"{row['kv_bytes'] / 1024:.0f} KiB | {row['prefill_ms']:.1f} | {row['decode_ms_per_token']:.2f} | "
                    f"{versus} | {row['floor_ms']:.3f} | {100 * row['floor_fraction']:.0f}% | "
                    f"{row['accuracy']:.2f} |"
                )
            if run["comparisons"]:
                out.append(
                    "\n| pair | same greedy answer | token agreement | kept visual Jaccard (mean / min) | "
                    "ours kept by kvpress | kvpress text evicted | same-rule Jaccard | score max diff inside / edges | "
                    "first-logit max diff |"
                )
                out.append("|---" * 9 + "|")
                for c in run["comparisons"]:
                    kept = c.get("kept") or {}
                    jac = evicted = recall = rule = score = "—"
                    if "visual_jaccard_mean" in kept:
                        jac = f"{kept['visual_jaccard_mean']:.3f} / {kept['visual_jaccard_min']:.3f}"
                        recall = f"{kept['ours_kept_by_kvpress']:.3f}"
                        evicted = f"{kept['kvpress_text_evicted_mean']:.1f}"
                        if "same_rule_jaccard_mean" in kept:
                            rule = f"{kept['same_rule_jaccard_mean']:.3f} / {kept['same_rule_jaccard_min']:.3f}"
                        if "score_max_diff_inside" in kept and "snapkv" in c["a"]:
                            score = f"{kept['score_max_diff_inside']:.1e} / {kept['score_max_diff_edges']:.1e}"
                    elif "jaccard_mean" in kept:
                        jac = f"{kept['jaccard_mean']:.3f} / {kept['jaccard_min']:.3f} (all)"
                    diff = f"{c['first_logits_max_abs_diff']:.2e}" if "first_logits_max_abs_diff" in c else "—"
                    out.append(
                        f"| {c['a']} vs {c['b']} | {c['same_answer']:.2f} | {c['token_agreement']:.3f} | {jac} | "
                        f"{recall} | {evicted} | {rule} | {score} | {diff} |"
                    )
            for t in run["targets"]:
                out.append(
                    f"\nTarget (decode within 1.3× of kvpress): {t['ours']} / {t['kvpress']} = {t['ratio']:.2f}× — "
                    f"**{'met' if t['met'] else 'not met'}**"
                )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", action="append", help=f"models ({', '.join(MODELS)}); repeatable")
    parser.add_argument("--frames", help="frame counts (default: per model)")
    parser.add_argument("--size", type=int, help="frame side in pixels (default: per model)")
    parser.add_argument("--budgets", default="0.2,0.1", help="fractions of visual tokens kept")
    parser.add_argument("--steps", type=int, default=32, help="decode steps per timing (end-of-turn ignored)")
    parser.add_argument("--greedy-limit", type=int, default=32, help="decode steps of the agreement runs")
    parser.add_argument("--samples", type=int, help="suite samples for answer agreement (default: per model)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--kvpress", choices=("yes", "auto", "no"), default=None,
                        help="yes: build the venv if missing (default); auto: use it if present (--quick "
                             "default); no: our side and the floor only")  # fmt: skip
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    parser.add_argument("--torch-spec", default=f"torch=={torch.__version__.split('+')[0]}")
    parser.add_argument("--setup-only", action="store_true", help="build the kvpress venv and exit")
    parser.add_argument("--bandwidth-mib", type=int, default=512)
    parser.add_argument("--quick", action="store_true", help="tiny model, 4 frames, few steps, 1 repetition")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    if args.setup_only or args.kvpress == "yes" or (args.kvpress is None and not args.quick):
        try:
            python = ensure_venv(args.venv, args.torch_spec)
        except (subprocess.CalledProcessError, OSError) as error:
            raise SystemExit(
                f"could not build the kvpress venv in {args.venv} ({error}); it needs PyPI once. "
                "--kvpress no runs our half and the floor only."
            ) from error
        if args.setup_only:
            print(python)
            return 0
    if args.quick:
        args.model = args.model or ["tiny-qwen2-vl"]
        args.steps, args.greedy_limit, args.samples, args.reps = 4, 4, 1, 1
        args.budgets, args.bandwidth_mib = "0.2", 64
    args.kvpress = args.kvpress or ("auto" if args.quick else "yes")
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

    peer, skipped = None, None
    if args.kvpress == "yes":
        peer = Peer(ensure_venv(args.venv, args.torch_spec), args.threads)
    elif args.kvpress == "auto" and venv_ready(args.venv):
        peer = Peer(venv_python(args.venv), args.threads)
    else:
        skipped = "--kvpress no" if args.kvpress == "no" else f"no kvpress venv at {args.venv}"
        print(f"kvpress half skipped: {skipped}", file=sys.stderr, flush=True)

    args.bandwidth = memory_bandwidth(args.bandwidth_mib) if not args.device.startswith("cuda") else None
    if args.bandwidth is None:  # a device copy
        n = args.bandwidth_mib * (1 << 20) // 4
        src, dst = torch.rand(n, device=args.device), torch.empty(n, device=args.device)
        times = []
        for _ in range(6):
            sync(args.device)
            start = time.perf_counter()
            dst.copy_(src)
            sync(args.device)
            times.append(time.perf_counter() - start)
        args.bandwidth = 2 * src.nbytes / statistics.median(times[1:])
    print(f"memory bandwidth (copy, read+write): {args.bandwidth / 1e9:.1f} GB/s", file=sys.stderr, flush=True)

    models, versions = [], None
    try:
        with tempfile.TemporaryDirectory(prefix="kvpress-compare-") as tmp:
            workdir = Path(tmp)
            for name in args.model or ["videoqa-demo-v1", "kv-heavy-small"]:
                directory, lm = load_for(name, workdir, args)
                if peer is not None:
                    versions = peer(
                        "load", model_dir=directory, dtype=args.dtype, device=args.device, threads=args.threads
                    )
                cfg = lm.text_config
                description = (
                    f"{cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
                    f"{cfg.num_attention_heads}/{cfg.num_key_value_heads} heads"
                )
                runs = []
                for count in [int(x) for x in (args.frames or MODELS[name]["frames"]).split(",")]:
                    run = measure(name, count, lm, directory, peer, workdir, args)
                    runs.append(run)
                    summary = {r["config"]: round(r["decode_ms_per_token"], 2) for r in run["rows"]}
                    print(f"{name} {count} frames: decode ms/token {summary}", file=sys.stderr, flush=True)
                models.append({"model": name, "description": description, "dtype": args.dtype, "runs": runs})
                del lm
    finally:
        if peer is not None:
            peer.close()
    import transformers

    machine = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{args.device}, {args.threads} thread(s)",
        "ours": {"torch": torch.__version__, "transformers": transformers.__version__},
        "kvpress_side": versions,
        "kvpress_skipped": skipped,
        "memory_bandwidth_bytes_per_s": args.bandwidth,
        "command": " ".join(["python", "bench/kvpress_compare.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    result = {"machine": machine, "models": models}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    text = markdown(result)
    if args.markdown:
        args.markdown.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
