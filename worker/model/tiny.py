"""Tiny random multimodal models built from a config in code, for tests and the embedded default.

Nothing is downloaded: the tokenizer is a byte-level BPE trained offline on a fixed corpus, the
weights come from a seeded initialisation. Each model is a real transformers model of a supported
family (same classes, processors and chat-template conventions as the released checkpoints), just
small: a forward pass over 8 frames takes milliseconds on a CPU.

Ids: ``tiny-qwen2-vl``, ``tiny-qwen2.5-vl``, ``tiny-llava-onevision``, ``tiny-qwen3-vl`` (DeepStack,
timestamps between frames), ``tiny-qwen3-vl-moe``, ``tiny-qwen3.5`` (hybrid: linear-attention layers
with a convolution and a recurrent state, full attention every second layer), ``tiny-qwen3.5-moe``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch

from videoqa.worker.model import tv_shim  # noqa: F401  (before transformers)

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]

# ChatML, as the Qwen2-VL and LLaVA-OneVision checkpoints use it. `{video}` / `{image}` are the
# family's placeholder text for one video / image.
_CHATML = (
    "{{% for message in messages %}}{{% if loop.first and message['role'] != 'system' %}}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{{% endif %}}"
    "<|im_start|>{{{{ message['role'] }}}}\n{{% if message['content'] is string %}}"
    "{{{{ message['content'] }}}}<|im_end|>\n{{% else %}}{{% for content in message['content'] %}}"
    "{{% if content['type'] == 'image' %}}{image}{{% elif content['type'] == 'video' %}}{video}"
    "{{% elif 'text' in content %}}{{{{ content['text'] }}}}{{% endif %}}{{% endfor %}}<|im_end|>\n"
    "{{% endif %}}{{% endfor %}}{{% if add_generation_prompt %}}<|im_start|>assistant\n{{% endif %}}"
)
QWEN_TEMPLATE = _CHATML.format(
    image="<|vision_start|><|image_pad|><|vision_end|>", video="<|vision_start|><|video_pad|><|vision_end|>"
)
LLAVA_TEMPLATE = _CHATML.format(image="<image>\n", video="<video>\n")

_WORDS = [
    "what",
    "which",
    "who",
    "where",
    "when",
    "how",
    "many",
    "much",
    "is",
    "are",
    "was",
    "were",
    "the",
    "a",
    "an",
    "in",
    "on",
    "at",
    "of",
    "to",
    "from",
    "and",
    "or",
    "frame",
    "frames",
    "video",
    "image",
    "first",
    "last",
    "second",
    "third",
    "next",
    "before",
    "after",
    "left",
    "right",
    "top",
    "bottom",
    "red",
    "green",
    "blue",
    "yellow",
    "black",
    "white",
    "orange",
    "purple",
    "circle",
    "square",
    "triangle",
    "star",
    "ball",
    "box",
    "car",
    "person",
    "dog",
    "cat",
    "moves",
    "appears",
    "disappears",
    "color",
    "shape",
    "count",
    "number",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "yes",
    "no",
    "it",
    "there",
    "this",
    "that",
    "shown",
    "happens",
    "object",
    "objects",
    "scene",
    "question",
    "answer",
    "describe",
    "does",
    "do",
    "see",
    "seen",
    "visible",
    "helpful",
    "assistant",
    "system",
    "user",
]


def _corpus() -> list[str]:
    """A fixed, deterministic training corpus for the tiny tokenizer."""
    lines = []
    for i, word in enumerate(_WORDS):
        nxt = _WORDS[(i * 7 + 3) % len(_WORDS)]
        third = _WORDS[(i * 13 + 5) % len(_WORDS)]
        lines.append(f"{word} {nxt} {third}? The {word} is {nxt}. {i} {i * 3}")
    lines.append("You are a helpful assistant. 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16")
    return lines * 4


@functools.lru_cache(maxsize=4)
def build_tokenizer(family: str) -> Any:
    """Train a byte-level BPE tokenizer (vocab 512) offline; returns a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = LLAVA_SPECIALS if family == "llava_onevision" else QWEN_SPECIALS
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    fast.chat_template = LLAVA_TEMPLATE if family == "llava_onevision" else QWEN_TEMPLATE
    if family == "llava_onevision":
        fast.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"]})
    return fast


@dataclass(frozen=True)
class TinySpec:
    """What a tiny model id builds."""

    family: str
    layers: int = 2
    hidden: int = 64
    heads: int = 4
    kv_heads: int = 2
    image_size: int = 224
    #: MLP width (default: 2 × hidden).
    intermediate: int | None = None
    #: Vision tower width and depth (Qwen families).
    vision_hidden: int = 32
    vision_depth: int = 2
    #: Vision tower heads and MLP width (Qwen3 families; 0: 2 × vision_hidden).
    vision_heads: int = 2
    vision_intermediate: int = 0
    #: Attention head width (0: hidden / heads). Qwen3.5 rotates a quarter of it.
    head_dim: int = 0
    #: Mixture of experts (Qwen3-VL-MoE): experts, experts per token, expert MLP width.
    experts: int = 0
    experts_per_token: int = 2
    expert_intermediate: int = 32
    #: Qwen3.5: every this many layers one has full attention (the others linear attention), and
    #: the linear attention's key/value heads and head widths.
    full_attention_interval: int = 2
    linear_key_heads: int = 2
    linear_value_heads: int = 4
    linear_head_dim: int = 16
    #: Qwen3-VL: vision blocks whose merged outputs DeepStack adds to the first decoder layers.
    deepstack: tuple[int, ...] = (0, 1)
    #: Qwen3 video processor: total pixels a video may keep over all its frames (0: 8 frames of
    #: ``image_size``²), and the most merged tokens a frame may have (the per-frame cap).
    video_pixels: int = 0
    frame_tokens: int = 768

    @classmethod
    def from_shape(cls, text: str, family: str = "qwen2_vl", **fields: Any) -> TinySpec:
        """A benchmark's ``--spec``: ``layers,hidden,heads,kv_heads[,mlp]`` (the MLP width defaults to
        2 × hidden) -> a spec of ``family``, with any other ``fields``."""
        values = [int(x) for x in text.split(",")]
        if len(values) not in (4, 5):
            raise ValueError(f"{text!r} is not layers,hidden,heads,kv_heads[,mlp]")
        layers, hidden, heads, kv_heads = values[:4]
        intermediate = values[4] if len(values) == 5 else None
        return cls(
            family, layers=layers, hidden=hidden, heads=heads, kv_heads=kv_heads, intermediate=intermediate, **fields
        )


TINY_MODELS: dict[str, TinySpec] = {
    "tiny-qwen2-vl": TinySpec("qwen2_vl"),
    "tiny-qwen2.5-vl": TinySpec("qwen2_5_vl"),
    "tiny-llava-onevision": TinySpec("llava_onevision"),
    "tiny-qwen3-vl": TinySpec("qwen3_vl", head_dim=16),
    "tiny-qwen3-vl-moe": TinySpec("qwen3_vl_moe", head_dim=16, experts=4),
    "tiny-qwen3.5": TinySpec("qwen3_5", layers=4, head_dim=32),
    "tiny-qwen3.5-moe": TinySpec("qwen3_5_moe", layers=4, head_dim=32, experts=4),
}

#: Families whose tiny models come from :func:`_build_qwen3` (Qwen3-VL's processor and clock).
QWEN3_FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
#: Hybrid families (linear-attention layers between full-attention ones).
HYBRID_FAMILIES = ("qwen3_5", "qwen3_5_moe")


def _text_config(spec: TinySpec, tok: Any) -> dict[str, Any]:
    head_dim = spec.head_dim or spec.hidden // spec.heads
    return dict(
        vocab_size=len(tok),
        hidden_size=spec.hidden,
        intermediate_size=spec.intermediate or spec.hidden * 2,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        max_position_embeddings=32768,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6}
        | ({"mrope_section": _mrope_section(head_dim)} if spec.family != "llava_onevision" else {}),
    ) | ({"head_dim": head_dim} if spec.head_dim else {})


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (t, h, w) as Qwen2-VL does (16/24/24 of 64)."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


def _build_qwen(spec: TinySpec, tok: Any) -> tuple[Any, Any]:
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    ids = {n: tok.convert_tokens_to_ids(n) for n in QWEN_SPECIALS}
    token_ids = dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    if spec.family == "qwen2_vl":
        vision = dict(
            depth=spec.vision_depth,
            embed_dim=spec.vision_hidden,
            hidden_size=spec.hidden,
            num_heads=max(2, spec.vision_hidden // 32),
            mlp_ratio=2,
        )
        config = Qwen2VLConfig(text_config=_text_config(spec, tok), vision_config=vision, **token_ids)
        model_cls, proc_cls = Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    else:
        vision = dict(
            depth=2,
            hidden_size=32,
            out_hidden_size=spec.hidden,
            intermediate_size=64,
            num_heads=2,
            window_size=112,
            fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(text_config=_text_config(spec, tok), vision_config=vision, **token_ids)
        model_cls, proc_cls = Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    pixels = dict(min_pixels=56 * 56, max_pixels=spec.image_size * spec.image_size)
    processor = proc_cls(
        image_processor=Qwen2VLImageProcessor(**pixels),
        video_processor=Qwen2VLVideoProcessor(**pixels, cap_pixels_per_frame=True),
        tokenizer=tok,
        chat_template=tok.chat_template,
    )
    return model_cls(config), processor


def _interleaved_mrope_section(rotary_half: int) -> list[int]:
    """(t, h, w) frequency counts for Qwen3's interleaved M-RoPE (``t h w t h w ... t t``): h and w
    each take a quarter of the ``rotary_half`` frequencies, t the rest (Qwen3-VL-8B: 24/20/20)."""
    h = max(1, rotary_half // 4)
    return [rotary_half - 2 * h, h, h]


def _qwen3_text_config(spec: TinySpec, tok: Any) -> dict[str, Any]:
    """Text config of Qwen3-VL (dense or MoE) and Qwen3.5 (hybrid linear/full attention)."""
    text = _text_config(spec, tok)
    head_dim = text["head_dim"]
    if spec.family in HYBRID_FAMILIES:
        rotary = 0.25
        text |= dict(
            full_attention_interval=spec.full_attention_interval,
            linear_num_key_heads=spec.linear_key_heads,
            linear_num_value_heads=spec.linear_value_heads,
            linear_key_head_dim=spec.linear_head_dim,
            linear_value_head_dim=spec.linear_head_dim,
            linear_conv_kernel_dim=4,
        )
    else:
        rotary = 1.0
    if spec.experts:
        text |= dict(
            num_experts=spec.experts,
            num_experts_per_tok=spec.experts_per_token,
            moe_intermediate_size=spec.expert_intermediate,
        ) | (
            {"shared_expert_intermediate_size": spec.expert_intermediate}
            if spec.family in HYBRID_FAMILIES
            else {"decoder_sparse_step": 1}
        )
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": 5e6,
        "mrope_interleaved": True,
        "mrope_section": _interleaved_mrope_section(int(head_dim * rotary) // 2),
    } | ({"partial_rotary_factor": rotary} if rotary < 1 else {})
    return text


def _build_qwen3(spec: TinySpec, tok: Any) -> tuple[Any, Any]:
    """Qwen3-VL (dense, MoE) or Qwen3.5: 16-pixel patches merged 2x2, frames paired into temporal
    patches, each written into the prompt after its time (``<t seconds>``)."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    classes = {
        "qwen3_vl": ("Qwen3VLConfig", "Qwen3VLForConditionalGeneration"),
        "qwen3_vl_moe": ("Qwen3VLMoeConfig", "Qwen3VLMoeForConditionalGeneration"),
        "qwen3_5": ("Qwen3_5Config", "Qwen3_5ForConditionalGeneration"),
        "qwen3_5_moe": ("Qwen3_5MoeConfig", "Qwen3_5MoeForConditionalGeneration"),
    }
    config_name, model_name = classes[spec.family]
    ids = {n: tok.convert_tokens_to_ids(n) for n in QWEN_SPECIALS}
    vision = dict(
        depth=spec.vision_depth,
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_intermediate or 2 * spec.vision_hidden,
        num_heads=spec.vision_heads,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=spec.hidden,
        num_position_embeddings=(spec.image_size // 16) ** 2,
    ) | ({"deepstack_visual_indexes": list(spec.deepstack)} if spec.family not in HYBRID_FAMILIES else {})
    config = getattr(transformers, config_name)(
        text_config=_qwen3_text_config(spec, tok),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    pixels = spec.image_size * spec.image_size
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            patch_size=16, merge_size=2, size={"shortest_edge": 32 * 32, "longest_edge": pixels}
        ),
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": 32 * 32, "longest_edge": spec.video_pixels or 8 * pixels},
            patch_size=16,
            merge_size=2,
            temporal_patch_size=2,
            cap_pixels_per_frame=True,
            max_video_tokens=spec.frame_tokens,
        ),
        tokenizer=tok,
        chat_template=tok.chat_template,
    )
    return getattr(transformers, model_name)(config), processor


def _build_llava_onevision(spec: TinySpec, tok: Any) -> tuple[Any, Any]:
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionImageProcessor,
        LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    size, patch = spec.image_size, 14 * 2
    text = _text_config(spec, tok) | {"model_type": "qwen2"}
    vision = dict(
        model_type="siglip_vision_model",
        image_size=size,
        patch_size=patch,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
    )
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=[[size, size]],
    )
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size={"height": size, "width": size}, image_grid_pinpoints=[[size, size]]
        ),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size={"height": size, "width": size}),
        num_image_tokens=(size // patch) ** 2,
        vision_feature_select_strategy="full",
        chat_template=tok.chat_template,
    )
    return LlavaOnevisionForConditionalGeneration(config), processor


#: Linear-attention parameters left at the library's initialisation (the decay rates).
_LINEAR_KEEP = ("A_log", "dt_bias")


def build_tiny(model_id: str, seed: int = 0) -> tuple[Any, Any]:
    """Build ``(model, processor)`` for a tiny model id, deterministically from ``seed``.

    Weights are drawn from N(0, 0.2) (a wider init than the default keeps greedy output of a random
    model from collapsing to one repeated token), in float32, eval mode, sdpa attention.
    """
    if model_id not in TINY_MODELS:
        raise KeyError(model_id)
    return build_from_spec(TINY_MODELS[model_id], seed)


def build_from_spec(spec: TinySpec, seed: int = 0, wide_init: bool = True) -> tuple[Any, Any]:
    """Build ``(model, processor)`` of a family at the sizes ``spec`` gives (random weights).

    ``wide_init`` redraws weights from N(0, 0.2) (lively untrained output); ``False`` keeps the
    library's initialisation, the one to train from."""
    tok = build_tokenizer(spec.family)
    torch.manual_seed(seed)
    if spec.family == "llava_onevision":
        model, processor = _build_llava_onevision(spec, tok)
    elif spec.family in QWEN3_FAMILIES:
        model, processor = _build_qwen3(spec, tok)
    else:
        model, processor = _build_qwen(spec, tok)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters() if wide_init else ():
            if ".linear_attn." in name and "norm" not in name and name.split(".")[-1] not in _LINEAR_KEEP:
                # Linear attention's recurrence amplifies a wide init until chunked and one-shot
                # prefill differ by 1e-4; at 0.05 they agree to float32 rounding.
                param.normal_(0.0, 0.05, generator=generator)
            elif ".linear_attn." in name:
                continue  # decay (A_log, dt_bias) and norms: the library's initialisation
            elif param.dim() >= 2:
                param.normal_(0.0, 0.2, generator=generator)
            elif "norm" not in name:
                param.normal_(0.0, 0.02, generator=generator)
    model.config._attn_implementation = "sdpa"
    return model.eval(), processor
