"""open_clip ViT checkpoints (RemoteCLIP, GeoRSCLIP) through the pure-torch converter, against the
real open_clip: tests/data holds a tiny open_clip ViT CLIP's state dict and the features open_clip
computed for fixed inputs (made by scripts/make_open_clip_fixture.py in a scratch venv with
open_clip; open_clip itself is not installed here)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

from trsllava.baselines.clip import embed_dataset, embed_images, embed_texts, load_clip
from trsllava.baselines.open_clip_convert import (
    convert_open_clip_state_dict,
    infer_config,
    load_open_clip_checkpoint,
    unwrap_state_dict,
)
from trsllava.baselines.tiny_clip import build_tiny_clip
from trsllava.cli import main as cli
from trsllava.datasets import DatasetSpec, load_dataset
from trsllava.encoders.dense import DenseRepresentation
from trsllava.errors import TrsllavaError

DATA = Path(__file__).parent / "data"
CHECKPOINT = DATA / "tiny_open_clip_vit.pt"
REFERENCE = np.load(DATA / "tiny_open_clip_vit_reference.npz")
TOLERANCE = 1e-5


def state_dict():
    return torch.load(CHECKPOINT, map_location="cpu", weights_only=True)


def features(output):
    return (output if isinstance(output, torch.Tensor) else output.pooler_output).numpy()


def hf_features(model):
    with torch.inference_mode():
        image = features(model.get_image_features(pixel_values=torch.from_numpy(REFERENCE["images"])))
        text = features(model.get_text_features(input_ids=torch.from_numpy(REFERENCE["tokens"])))
    return image, text


def converted_model(weights, activation="gelu"):
    from transformers import CLIPModel

    config = infer_config(weights, activation)
    model = CLIPModel(config).eval()
    model.load_state_dict(convert_open_clip_state_dict(weights, config), strict=True)
    return model


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    """A CLIP tokenizer of the fixture's vocabulary (522 ids, start 520, end 521): tiny_clip's."""
    return build_tiny_clip(tmp_path_factory.mktemp("tokenizer") / "tiny-clip")


def test_the_shapes_give_the_architecture():
    config = infer_config(state_dict())
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size) == (64, 2, 1, 128)
    assert (vision.image_size, vision.patch_size, vision.hidden_act) == (32, 8, "gelu")
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size) == (64, 2, 1, 96)
    assert (text.vocab_size, text.max_position_embeddings, text.eos_token_id, text.bos_token_id) == (522, 32, 521, 520)
    assert config.projection_dim == 32


def test_converted_features_equal_open_clips():
    """encode_image / encode_text of open_clip (before normalisation) == get_*_features of the converted model."""
    assert str(REFERENCE["open_clip_version"])  # the fixture records which open_clip made it
    image, text = hf_features(converted_model(state_dict()))
    assert image.shape == REFERENCE["image_features"].shape == (2, 32)
    np.testing.assert_allclose(image, REFERENCE["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text, REFERENCE["text_features"], rtol=0, atol=TOLERANCE)
    # the comparison is sharp enough to see a wrong activation (open_clip's ViT-B-32 is GELU, not QuickGELU)
    image_q, text_q = hf_features(converted_model(state_dict(), "quick_gelu"))
    assert np.abs(image_q - REFERENCE["image_features"]).max() > 100 * TOLERANCE
    assert np.abs(text_q - REFERENCE["text_features"]).max() > 100 * TOLERANCE


def test_a_training_checkpoint_wrapped_in_state_dict_with_module_prefixes_converts_the_same():
    plain = state_dict()
    wrapped = {"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in plain.items()}}
    wrapped["state_dict"]["module.attn_mask"] = torch.full((32, 32), float("-inf")).triu(1)  # older open_clip saved it
    unwrapped = unwrap_state_dict(wrapped)
    config = infer_config(unwrapped)
    a, b = convert_open_clip_state_dict(plain, config), convert_open_clip_state_dict(unwrapped, config)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.update({"visual.layer1.0.conv1.weight": torch.zeros(1), "visual.attnpool.c_proj.weight": torch.zeros(1)}),
     "open_clip ResNet CLIP checkpoints are not supported"),
    (lambda sd: sd.update({"visual.trunk.blocks.0.norm1.weight": torch.zeros(1)}), "timm image tower"),
    (lambda sd: sd.pop("visual.ln_post.bias"), "no visual.ln_post.bias"),
    (lambda sd: sd.pop("transformer.resblocks.1.mlp.c_proj.weight"), "no transformer.resblocks.1.mlp.c_proj.weight"),
    (lambda sd: sd.pop("text_projection"), "no text_projection"),
    (lambda sd: sd.update({"logit_bias": torch.zeros(())}), "unexpected open_clip keys .*logit_bias"),
])
def test_not_an_open_clip_vit_state_dict_is_refused(edit, message):
    weights = state_dict()
    edit(weights)
    with pytest.raises(ValueError, match=message):
        convert_open_clip_state_dict(weights, infer_config(weights))


def test_checkpoint_files_that_cannot_be_converted_fail_naming_the_file(tmp_path, tokenizer_folder):
    resnet = {k: v for k, v in state_dict().items() if not k.startswith("visual.")}
    resnet.update({"visual.layer1.0.conv1.weight": torch.zeros(4, 4, 1, 1), "visual.attnpool.positional_embedding": torch.zeros(2)})
    torch.save(resnet, tmp_path / "RN50.pt")
    with pytest.raises(TrsllavaError, match=r"RN50\.pt: open_clip ResNet CLIP checkpoints are not supported"):
        load_open_clip_checkpoint(tmp_path / "RN50.pt", str(tokenizer_folder))
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(TrsllavaError, match=r"notes\.pt: not a torch checkpoint"):
        load_open_clip_checkpoint(tmp_path / "notes.pt", str(tokenizer_folder))
    with pytest.raises(TrsllavaError, match=r"not found: .*missing\.pt"):
        load_clip({"model": str(tmp_path / "missing.pt"), "tokenizer": str(tokenizer_folder)}, "remoteclip")
    with pytest.raises(TrsllavaError, match=r"tokenizer .*tiny_open_clip_vit\.pt could not be loaded"):
        load_open_clip_checkpoint(CHECKPOINT, str(tmp_path / "no-tokenizer-here"))
    # a tokenizer of another vocabulary size; without a hub, transformers 5 gives an empty tokenizer for
    # an uncached hub id instead of raising, which this same check catches
    other = tmp_path / "other-tokenizer"
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder))
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(TrsllavaError, match=r"has 523 tokens where tiny_open_clip_vit\.pt has 522 token embeddings"):
        load_open_clip_checkpoint(CHECKPOINT, str(other))
    with pytest.raises(TrsllavaError, match=r"openai/clip-vit-base-patch32.* tokens where tiny_open_clip_vit\.pt has 522"):
        load_open_clip_checkpoint(CHECKPOINT)  # the default tokenizer: 49408 tokens from a hub, an empty one offline


def test_a_config_entry_naming_the_pt_file_embeds_through_the_baseline(tokenizer_folder, tmp_path):
    entry = {"model": str(CHECKPOINT), "tokenizer": str(tokenizer_folder), "device": "cpu"}
    model, processor, device = load_clip(entry, "remoteclip")
    image, text = hf_features(model)  # the loaded model is the converted one
    np.testing.assert_allclose(image, REFERENCE["image_features"], rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(text, REFERENCE["text_features"], rtol=0, atol=TOLERANCE)
    tokens = processor(text=["a harbour"], return_tensors="pt")["input_ids"][0].tolist()
    assert tokens[0] == 520 and tokens[-1] == 521  # the tokenizer's start / end ids, the model's bos / eos

    images, references = load_dataset(DatasetSpec.from_config("sample", {"format": "builtin"}))
    embed_dataset("remoteclip", entry, images.head(3), references.head(6), tmp_path / "emb")
    image_rep = DenseRepresentation.load(tmp_path / "emb" / "images")
    text_rep = DenseRepresentation.load(tmp_path / "emb" / "references")
    assert image_rep.vectors.shape == (3, 32) and text_rep.vectors.shape == (references.head(6)["text"].n_unique(), 32)
    np.testing.assert_allclose(np.linalg.norm(image_rep.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(text_rep.vectors, axis=1), 1.0, atol=1e-5)

    # convert once to a Hugging Face folder: it loads like any HF CLIP and embeds identically
    assert cli(["convert-clip", str(CHECKPOINT), "--tokenizer", str(tokenizer_folder), "--out", str(tmp_path / "hf")]) == 0
    folder = load_clip({"model": str(tmp_path / "hf"), "device": "cpu"}, "remoteclip-hf")
    paths = images["path"].head(3).to_list()
    np.testing.assert_allclose(embed_images(*folder, paths)[0], image_rep.vectors, atol=1e-6)
    np.testing.assert_allclose(embed_texts(*folder, references.head(6)["text"].unique(maintain_order=True).to_list()),
                               text_rep.vectors, atol=1e-6)
