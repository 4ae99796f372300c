"""A tiny, randomly initialised LLaVA built offline in about a second, for tests and benchmarks.

The folder it writes (config, safetensors weights, tokenizer, image processor, processor, chat
template) loads with ``AutoProcessor`` + ``LlavaForConditionalGeneration`` and with vLLM. Its
outputs are gibberish (random weights): what it exercises is the plumbing — batching, image
preprocessing, chat templates, structured output, token accounting.

Follows the recipe in shared/notes/vllm-cpu/build_tiny_llava.py (CLIP vision tower + Llama LM,
1.6 M parameters, 16 image tokens per image, byte-level BPE tokenizer trained on a few sentences).
"""

from __future__ import annotations

import sys
from pathlib import Path

# user: <image>\n<text>\n ... ASSISTANT:   (the format of llava-1.5, reduced)
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}USER: {% elif m['role'] == 'assistant' %}ASSISTANT: {% else %}SYSTEM: {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] in ['image', 'image_url'] %}<image>\n"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}"  # a literal newline would be eaten by trim_blocks
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# The tokenizer's training text: every byte stays encodable (byte-level alphabet), these only
# decide which merges exist.
_CORPUS = [
    "A photo of a red square on a white background.",
    "Describe the image in one sentence.",
    "There are many planes parked next to a long building in an airport.",
    "A river runs through dense green farmland.",
    "USER: What is in this picture? ASSISTANT: A small house with a garden.",
    '{"caption": "a cat", "objects": ["cat", "sofa"], "count": 2, "ok": true}',
    "The quick brown fox jumps over the lazy dog 0123456789.",
    "Satellite image of fields, roads, buildings, trees and water.",
]

IMAGE_SIZE = 64
PATCH_SIZE = 16  # -> (64 / 16) ** 2 = 16 image tokens per image


def _train_bpe(special_tokens, corpus=_CORPUS):
    """A byte-level BPE ``tokenizers.Tokenizer`` (vocabulary 512) trained on ``corpus``, the
    ``special_tokens`` taking the first ids in order. Deterministic: same inputs, same vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) * 20, trainer)
    return tok


def _build_tokenizer():
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(SPECIAL_TOKENS)
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def _canonical_vision_keys(weights_file: Path) -> None:
    """Rename ``vision_tower.X`` to ``vision_tower.vision_model.X`` in a saved safetensors file.

    transformers 5.x saves the CLIP tower without the ``vision_model`` level; real llava-hf
    checkpoints and vLLM's loader use it (transformers loads both spellings)."""
    from safetensors.torch import load_file, save_file

    state = load_file(weights_file)
    prefix, canonical = "vision_tower.", "vision_tower.vision_model."
    renamed = {
        (canonical + key[len(prefix):] if key.startswith(prefix) and not key.startswith(canonical) else key): value
        for key, value in state.items()
    }
    save_file(renamed, weights_file, metadata={"format": "pt"})


def build_tiny_llava(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random LLaVA (model, tokenizer, processor, chat template) to ``out_dir``.

    Offline, about a second, the same weights for the same ``seed``. The global torch RNG state is
    left as it was. Returns ``out_dir``."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    vocab_size = ((len(tokenizer) + 63) // 64) * 64  # embedding rows: a multiple of 64
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")

    vision = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        projection_dim=64,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 64: a size every vLLM CPU attention kernel handles
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",  # drop CLS -> 16 image tokens
        projector_hidden_act="gelu",
        image_seq_length=(IMAGE_SIZE // PATCH_SIZE) ** 2,
    )
    config.dtype = "float32"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config).eval()
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id

    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        image_token="<image>",
        num_additional_image_tokens=1,  # CLIP's CLS token
        chat_template=CHAT_TEMPLATE,
    )

    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _canonical_vision_keys(out_dir / "model.safetensors")
    return out_dir


if __name__ == "__main__":  # python -m trsllava.captioning.tiny_models OUT_DIR [SEED]
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tiny-llava")
    print(build_tiny_llava(target, int(sys.argv[2]) if len(sys.argv) > 2 else 0))
