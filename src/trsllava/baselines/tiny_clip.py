"""A tiny, randomly initialised CLIP built offline in about a second, for tests.

The folder it writes (config, safetensors weights, tokenizer, image processor, processor) is a
Hugging Face CLIP checkpoint like ``openai/clip-vit-base-patch32`` or a converted RemoteCLIP /
GeoRSCLIP, only tiny: it loads through the same ``CLIPModel`` / ``AutoProcessor`` code path. Its
embeddings are random projections (random weights): what it exercises is the plumbing.
Follows the recipe of ``trsllava.captioning.tiny_models`` (tiny LLaVA).
"""

from __future__ import annotations

import sys
from pathlib import Path

IMAGE_SIZE = 32
PATCH_SIZE = 8
MAX_TEXT_TOKENS = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte-level alphabet: every byte maps to a printable character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes)))


def _build_tokenizer():
    """A CLIPTokenizer over the byte alphabet (character-level: each byte and each byte ending a
    word), with a handful of merges so that some common words are single tokens."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab_tokens = alphabet + [c + "</w>" for c in alphabet]
    merges = ["t h", "th e</w>", "a n", "an d</w>", "o f</w>", "i n</w>", "a r", "e a"]
    for merge in merges:
        vocab_tokens.append(merge.replace(" ", ""))
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(vocab_tokens))}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges])
    tokenizer.model_max_length = MAX_TEXT_TOKENS
    return tokenizer


def build_tiny_clip(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random CLIP (model, tokenizer, image processor, processor) to ``out_dir``.

    Offline, about a second, the same weights for the same ``seed``; the global torch RNG state is
    left as it was. Returns ``out_dir``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer()
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": MAX_TEXT_TOKENS,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": IMAGE_SIZE,
            "patch_size": PATCH_SIZE,
        },
        projection_dim=16,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE},
        crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":  # python -m trsllava.baselines.tiny_clip OUT_DIR [SEED]
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tiny-clip")
    print(build_tiny_clip(target, int(sys.argv[2]) if len(sys.argv) > 2 else 0))
