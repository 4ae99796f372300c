"""A tiny, randomly initialised SmolVLM (Idefics3 architecture) built offline in seconds, for tests.

``HuggingFaceTB/SmolVLM-256M-Instruct`` is an ``idefics3`` model: a SigLIP-like vision tower, a
pixel-shuffle connector (``scale_factor`` 4: 4 x 4 neighbouring patch embeddings are concatenated
and projected to one LM token) and a Llama-style LM; its ``Idefics3Processor`` resizes an image so
its longer side is ``size["longest_edge"]``, cuts it into ``max_image_size`` tiles (rows x cols,
each tile marked ``<fake_token_around_image><row_i_col_j>`` + ``image_seq_len`` ``<image>``
tokens, a newline after each row) and appends a global view of the whole image
(``\\n<fake_token_around_image><global-img>`` + ``image_seq_len`` ``<image>`` tokens +
``<fake_token_around_image>``). Without splitting the image is one tile: its global view only.

The folder written here has the same model type, classes, special tokens, chat template and
processor logic, scaled down: 64-pixel tiles of 4-pixel patches (16 x 16 patches, pixel shuffle by
4 -> ``image_seq_len`` 16 LM tokens per tile) and ``size["longest_edge"]`` 4 tiles long, so a
square image is split into the same 4 x 4 tiles + global view as by the real model. Outputs are
gibberish (random weights); what it exercises is our loading, prompting, batching and token
accounting for this architecture through ``from_pretrained``.

``SMOLVLM_256M_PROCESSOR`` holds the real model's processor settings as reconstructed from its
hub files (not downloadable here): ``image_seq_len`` 64 = (512 / 16) ** 2 / 4 ** 2,
``size`` 2048, ``max_image_size`` 512, splitting on.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .tiny_models import _CORPUS, _train_bpe

# SmolVLM-256M-Instruct's chat_template (Idefics3/SmolVLM format):
# "<|im_start|>User:<image>Describe ...<end_of_utterance>\nAssistant:"
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'] is string %}{{': ' + message['content']}}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"] + [
    f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)
]
# SmolLM2's first ids: unk, bos, eos/pad
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + IMAGE_TOKENS

TILE = 64  # vision image_size and max_image_size["longest_edge"] (real: 512)
PATCH_SIZE = 4  # (real: 16) -> 16 x 16 patches per tile
SCALE_FACTOR = 4  # pixel shuffle, as in the real model
IMAGE_SEQ_LEN = (TILE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 16 LM tokens per tile (real: 64)
LONGEST_EDGE = 4 * TILE  # size["longest_edge"] (real: 2048 = 4 * 512)

# The real SmolVLM-256M-Instruct processor settings (reconstructed; see the module docstring).
SMOLVLM_256M_PROCESSOR = {
    "image_seq_len": 64,
    "size": {"longest_edge": 2048},
    "max_image_size": {"longest_edge": 512},
    "do_image_splitting": True,
    "resample": 1,  # LANCZOS
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}

_SMOLVLM_CORPUS = _CORPUS + [
    "<|im_start|>User:<image>Describe the image in one sentence.<end_of_utterance>\nAssistant: A harbour with boats.",
]


def build_tokenizer():
    """A byte-level BPE tokenizer with SmolVLM's special tokens and chat template; like SmolLM2's,
    it adds no BOS itself (the chat template starts with ``<|im_start|>``)."""
    from transformers import PreTrainedTokenizerFast

    tok = _train_bpe(SPECIAL_TOKENS, _SMOLVLM_CORPUS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<end_of_utterance>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
        extra_special_tokens=IMAGE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=8192,
    )


def build_processor(tokenizer=None, *, image_seq_len: int = IMAGE_SEQ_LEN, tile: int = TILE,
                    longest_edge: int = LONGEST_EDGE, do_image_splitting: bool = True):
    """An ``Idefics3Processor`` with SmolVLM's layout. The defaults are the tiny model's; the real
    model's are in ``SMOLVLM_256M_PROCESSOR``."""
    # the PIL backend: the same preprocessing as the torchvision one, and needs no torchvision
    from transformers import Idefics3ImageProcessorPil, Idefics3Processor
    from transformers.image_utils import PILImageResampling

    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    image_processor = Idefics3ImageProcessorPil(
        do_convert_rgb=True,
        do_resize=True,
        size={"longest_edge": longest_edge},
        resample=PILImageResampling.LANCZOS,
        do_image_splitting=do_image_splitting,
        max_image_size={"longest_edge": tile},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        do_pad=True,
    )
    return Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len,
                             chat_template=CHAT_TEMPLATE)


def build_tiny_smolvlm(out_dir: Path, seed: int = 0) -> Path:
    """Write a tiny random SmolVLM (``idefics3``: model, tokenizer, processor, chat template) to ``out_dir``.

    Offline, a few seconds, about 1.8 M parameters, the same weights for the same ``seed``; the
    global torch RNG state is left as it was. The saved processor splits images (as the real
    model's does). Returns ``out_dir``."""
    import torch
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3VisionConfig,
        LlamaConfig,
    )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    vocab_size = ((len(tokenizer) + 63) // 64) * 64
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<|im_start|>", "<|im_end|>",
                                                                       "<end_of_utterance>", "<image>")}

    vision = Idefics3VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=TILE,
        patch_size=PATCH_SIZE,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,  # head_dim 64, as SmolLM2's
        num_key_value_heads=2,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        bos_token_id=ids["<|im_start|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|im_end|>"],
        tie_word_embeddings=False,
    )
    config = Idefics3Config(
        vision_config=vision,
        text_config=text,
        image_token_id=ids["<image>"],
        scale_factor=SCALE_FACTOR,
        tie_word_embeddings=False,
        pad_token_id=ids["<|im_end|>"],
    )
    config.dtype = "float32"

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Idefics3ForConditionalGeneration(config).eval()
    generation = model.generation_config
    generation.bos_token_id = ids["<|im_start|>"]
    generation.eos_token_id = [ids["<|im_end|>"], ids["<end_of_utterance>"]]  # as SmolVLM's generation_config
    generation.pad_token_id = ids["<|im_end|>"]

    processor = build_processor(tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":  # python -m trsllava.captioning.tiny_smolvlm OUT_DIR [SEED]
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("tiny-smolvlm")
    print(build_tiny_smolvlm(target, int(sys.argv[2]) if len(sys.argv) > 2 else 0))
