"""Write the tiny open_clip ViT fixture that tests/test_open_clip_convert.py checks the converter against.

Not part of the product, and not run in CI: it needs the real ``open_clip`` (open_clip_torch, with
torchvision), which the product's environment deliberately lacks. Run it once in a scratch venv:

    python -m venv --system-site-packages /tmp/openclip-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/openclip-venv/lib/python3.11/site-packages/main-venv.pth
    /tmp/openclip-venv/bin/pip install --no-deps open_clip_torch ftfy regex wcwidth torchvision==0.28.0  # matches torch 2.13
    /tmp/openclip-venv/bin/python scripts/patch_torchvision.py   # the CUDA wheel's compiled ops break beside CPU torch
    /tmp/openclip-venv/bin/python scripts/make_open_clip_fixture.py [OUT_DIR]   # default tests/data

It builds a tiny open_clip ``CLIP`` with a ViT image tower (GELU, as open_clip's ``ViT-B-32`` that
RemoteCLIP and GeoRSCLIP load into), seeds it, perturbs every parameter (so that no LayerNorm is the
identity and no bias is zero: a swapped key would show), and writes

- ``tiny_open_clip_vit.pt``: its ``state_dict()`` saved with ``torch.save`` (what a RemoteCLIP /
  GeoRSCLIP ``.pt`` file is, only tiny);
- ``tiny_open_clip_vit_reference.npz``: two fixed preprocessed image tensors and two token-id
  sequences, the features open_clip computes for them (``encode_image`` / ``encode_text`` before
  normalisation) and the open_clip / torch versions that computed them.

Token sequences follow CLIP's layout: start id (vocab - 2), content ids below it, end id (vocab - 1,
the highest: open_clip pools the text at the argmax id), then zero padding.
"""

import sys
from pathlib import Path

import numpy as np
import open_clip
import torch

VOCAB = 522  # the size of trsllava.baselines.tiny_clip's tokenizer, whose start / end ids are 520 / 521
CONTEXT = 32
WIDTH = 64  # one head per tower under open_clip's default head width 64 (the converter's inference rule)
EMBED_DIM = 32
SEED = 0


def build_model() -> torch.nn.Module:
    torch.manual_seed(SEED)
    model = open_clip.CLIP(
        embed_dim=EMBED_DIM,
        vision_cfg={"image_size": 32, "patch_size": 8, "width": WIDTH, "layers": 2, "head_width": 64, "mlp_ratio": 2.0},
        text_cfg={"context_length": CONTEXT, "vocab_size": VOCAB, "width": WIDTH, "heads": WIDTH // 64, "layers": 2,
                  "mlp_ratio": 1.5},  # another MLP width than the image tower's: each is read from its own shapes
        quick_gelu=False,
    ).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name != "logit_scale":
                parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED + 1)
    images = torch.randn(2, 3, 32, 32, generator=generator)
    tokens = torch.zeros(2, CONTEXT, dtype=torch.long)
    for row, length in enumerate((5, 20)):
        content = torch.randint(1, VOCAB - 2, (length,), generator=generator)
        tokens[row, : length + 2] = torch.cat([torch.tensor([VOCAB - 2]), content, torch.tensor([VOCAB - 1])])
    return images, tokens


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    model = build_model()
    images, tokens = inputs()
    with torch.no_grad():
        image_features = model.encode_image(images, normalize=False)
        text_features = model.encode_text(tokens, normalize=False)
    torch.save(model.state_dict(), out_dir / "tiny_open_clip_vit.pt")
    np.savez(
        out_dir / "tiny_open_clip_vit_reference.npz",
        images=images.numpy(),
        tokens=tokens.numpy(),
        image_features=image_features.numpy(),
        text_features=text_features.numpy(),
        logit_scale=model.logit_scale.detach().numpy(),
        open_clip_version=np.array(open_clip.__version__),
        torch_version=np.array(torch.__version__),
    )
    size = (out_dir / "tiny_open_clip_vit.pt").stat().st_size
    print(f"open_clip {open_clip.__version__}, torch {torch.__version__}: wrote {out_dir} (state dict {size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests" / "data")
