"""open_clip ViT checkpoints (RemoteCLIP, GeoRSCLIP) as Hugging Face ``CLIPModel``, in pure torch.

RemoteCLIP (``RemoteCLIP-ViT-B-32.pt``) and GeoRSCLIP (``RS5M_ViT-B-32.pt``) are published as
state dicts of open_clip's ``CLIP`` class. open_clip itself (and the torchvision it needs) stays out
of the product's environment: the weights are renamed into the layout of ``transformers``'
``CLIPModel`` (the same renaming as transformers' ``convert_clip_original_pytorch_to_hf.py``), and
the architecture is read off the tensor shapes:

- widths, layer counts, MLP sizes, patch size, image size (patch x sqrt(positions - 1)), context
  length, vocabulary size and projection dim from the shapes;
- heads = width // 64 in both towers (open_clip's default head width, true of ViT-B/32, B/16, L/14);
- the activation is GELU, as in open_clip's ``ViT-B-32`` config into which both checkpoints are
  loaded (``quick_gelu`` for checkpoints made with a ``-quickgelu`` config, e.g. OpenAI's own).

Images are preprocessed as open_clip does for these models: shortest side resized to the image size
(bicubic), centre crop, OpenAI CLIP mean / std. Text uses the standard CLIP BPE tokenizer (RemoteCLIP
and GeoRSCLIP ViT-B-32 use open_clip's default, the same vocabulary as openai/clip-vit-base-patch32).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from ..errors import TrsllavaError

log = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin")
DEFAULT_TOKENIZER = "openai/clip-vit-base-patch32"
HEAD_WIDTH = 64
ACTIVATIONS = ("gelu", "quick_gelu")
IGNORED_KEYS = {"attn_mask"}  # the text tower's causal mask, a buffer saved by older open_clip versions


def is_open_clip_checkpoint(source: str) -> bool:
    """A model source naming a file with a torch checkpoint suffix (``.pt``, ``.pth``, ``.bin``)."""
    return Path(source).suffix.lower() in CHECKPOINT_SUFFIXES


def unwrap_state_dict(checkpoint) -> dict:
    """The tensors of an open_clip checkpoint: a bare state dict, or one under ``state_dict`` (open_clip's
    training checkpoints), with the ``module.`` prefix of DataParallel / DDP training removed."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"not a state dict (a {type(checkpoint).__name__})")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in checkpoint.items()}


def _check_layout(state_dict: dict) -> None:
    keys = set(state_dict)
    if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in keys):
        raise ValueError("open_clip ResNet CLIP checkpoints are not supported (only ViT image towers)")
    if any(k.startswith("visual.trunk.") for k in keys):
        raise ValueError("open_clip checkpoints with a timm image tower are not supported (only open_clip's own ViT)")
    if any(k.startswith("text.") for k in keys):
        raise ValueError("open_clip checkpoints with a Hugging Face text tower are not supported (only open_clip's own text transformer)")
    needed = ["visual.conv1.weight", "visual.class_embedding", "visual.positional_embedding", "visual.proj",
              "token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight"]
    missing = [k for k in needed if k not in keys]
    if missing:
        raise ValueError(f"not an open_clip ViT CLIP state dict: no {', '.join(missing)}")


def _layers(state_dict: dict, prefix: str) -> int:
    indices = {int(k[len(prefix):].split(".")[0]) for k in state_dict if k.startswith(prefix)}
    if not indices or indices != set(range(len(indices))):
        raise ValueError(f"not an open_clip ViT CLIP state dict: transformer blocks {prefix}N are {sorted(indices) or 'absent'}")
    return len(indices)


def infer_config(state_dict: dict, activation: str = "gelu"):
    """The ``CLIPConfig`` of an open_clip ViT state dict, read off its tensor shapes."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)} (got {activation!r})")
    _check_layout(state_dict)
    try:
        return _infer_config(state_dict, activation)
    except KeyError as exc:
        raise ValueError(f"not an open_clip ViT CLIP state dict: no {exc.args[0]}") from None


def _infer_config(state_dict: dict, activation: str):
    from transformers import CLIPConfig

    text_layers = _layers(state_dict, "transformer.resblocks.")
    vision_layers = _layers(state_dict, "visual.transformer.resblocks.")
    vision_width, _, patch_size, _ = state_dict["visual.conv1.weight"].shape
    grid = math.isqrt(state_dict["visual.positional_embedding"].shape[0] - 1)
    if grid * grid + 1 != state_dict["visual.positional_embedding"].shape[0]:
        raise ValueError("not an open_clip ViT CLIP state dict: visual.positional_embedding is not 1 + a square grid")
    vocab_size, text_width = state_dict["token_embedding.weight"].shape
    projection_dim = state_dict["text_projection"].shape[1]
    if state_dict["visual.proj"].shape[1] != projection_dim:
        raise ValueError("not an open_clip ViT CLIP state dict: visual.proj and text_projection project to different sizes")
    for width in (vision_width, text_width):
        if width % HEAD_WIDTH:
            raise ValueError(f"a tower width of {width} is not a multiple of the head width {HEAD_WIDTH}")
    common = {"hidden_act": activation, "projection_dim": int(projection_dim)}
    return CLIPConfig(
        text_config={
            **common,
            "vocab_size": int(vocab_size),
            "hidden_size": int(text_width),
            "intermediate_size": int(state_dict["transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            "num_hidden_layers": text_layers,
            "num_attention_heads": int(text_width) // HEAD_WIDTH,
            "max_position_embeddings": int(state_dict["positional_embedding"].shape[0]),
            # CLIP's BPE puts <|startoftext|> and <|endoftext|> last; the end id is the highest, where
            # open_clip pools the text (argmax)
            "bos_token_id": int(vocab_size) - 2,
            "eos_token_id": int(vocab_size) - 1,
            "pad_token_id": 0,
        },
        vision_config={
            **common,
            "hidden_size": int(vision_width),
            "intermediate_size": int(state_dict["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]),
            "num_hidden_layers": vision_layers,
            "num_attention_heads": int(vision_width) // HEAD_WIDTH,
            "image_size": int(patch_size * grid),
            "patch_size": int(patch_size),
        },
        projection_dim=int(projection_dim),
    )


def _blocks(state_dict: dict, source: str, target: str, layers: int) -> dict:
    out = {}
    for i in range(layers):
        src, dst = f"{source}.{i}", f"{target}.{i}"
        q, k, v = state_dict[f"{src}.attn.in_proj_weight"].chunk(3, dim=0)
        qb, kb, vb = state_dict[f"{src}.attn.in_proj_bias"].chunk(3, dim=0)
        out.update({
            f"{dst}.self_attn.q_proj.weight": q, f"{dst}.self_attn.q_proj.bias": qb,
            f"{dst}.self_attn.k_proj.weight": k, f"{dst}.self_attn.k_proj.bias": kb,
            f"{dst}.self_attn.v_proj.weight": v, f"{dst}.self_attn.v_proj.bias": vb,
        })
        for old, new in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                         ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            out[f"{dst}.{new}.weight"] = state_dict[f"{src}.{old}.weight"]
            out[f"{dst}.{new}.bias"] = state_dict[f"{src}.{old}.bias"]
    return out


def _rename(state_dict: dict, config) -> dict:
    """open_clip names -> transformers' CLIPModel names (KeyError for a missing tensor)."""
    out = {
        "vision_model.embeddings.class_embedding": state_dict["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state_dict["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state_dict["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state_dict["visual.ln_pre.weight"],  # sic: HF's spelling
        "vision_model.pre_layrnorm.bias": state_dict["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state_dict["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state_dict["visual.ln_post.bias"],
        "visual_projection.weight": state_dict["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state_dict["positional_embedding"],
        "text_model.final_layer_norm.weight": state_dict["ln_final.weight"],
        "text_model.final_layer_norm.bias": state_dict["ln_final.bias"],
        "text_projection.weight": state_dict["text_projection"].t(),
        "logit_scale": state_dict["logit_scale"],
    }
    out.update(_blocks(state_dict, "visual.transformer.resblocks", "vision_model.encoder.layers",
                       config.vision_config.num_hidden_layers))
    out.update(_blocks(state_dict, "transformer.resblocks", "text_model.encoder.layers", config.text_config.num_hidden_layers))
    return out


def convert_open_clip_state_dict(state_dict: dict, config) -> dict:
    """The ``CLIPModel`` state dict (float32, contiguous) of an open_clip ViT CLIP state dict.

    Every tensor of ``state_dict`` is used, except the known buffers in ``IGNORED_KEYS``; a leftover
    or a missing key raises ``ValueError``."""
    _check_layout(state_dict)
    try:
        out = _rename(state_dict, config)
    except KeyError as exc:
        raise ValueError(f"not an open_clip ViT CLIP state dict: no {exc.args[0]}") from None
    vision, text = config.vision_config, config.text_config
    used = {"visual.class_embedding", "visual.conv1.weight", "visual.positional_embedding", "visual.ln_pre.weight",
            "visual.ln_pre.bias", "visual.ln_post.weight", "visual.ln_post.bias", "visual.proj", "token_embedding.weight",
            "positional_embedding", "ln_final.weight", "ln_final.bias", "text_projection", "logit_scale"}
    used |= {k for k in state_dict if k.startswith(("visual.transformer.resblocks.", "transformer.resblocks."))
             and int(k.split("resblocks.")[1].split(".")[0]) < (vision.num_hidden_layers if k.startswith("visual.") else text.num_hidden_layers)}
    leftover = sorted(set(state_dict) - used - IGNORED_KEYS)
    if leftover:
        raise ValueError(f"unexpected open_clip keys (not converted): {', '.join(leftover[:5])}"
                         + (f" and {len(leftover) - 5} more" if len(leftover) > 5 else ""))
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def _read(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise TrsllavaError(f"open_clip checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip / pickle errors of any kind: not a torch weights file
        raise TrsllavaError(f"{path}: not a torch checkpoint of plain tensors ({str(exc).splitlines()[0][:200]})") from exc
    try:
        return unwrap_state_dict(checkpoint)
    except ValueError as exc:
        raise TrsllavaError(f"{path}: {exc}") from None


def load_open_clip_checkpoint(path, tokenizer_source: str = DEFAULT_TOKENIZER, activation: str = "gelu"):
    """(``CLIPModel``, ``CLIPProcessor``) of an open_clip ViT checkpoint file, every weight loaded
    (strictly: no Hugging Face weight left at its random initialisation, no open_clip tensor unused),
    with open_clip's preprocessing and the CLIP tokenizer of ``tokenizer_source`` (a folder or hub id)."""
    import torch  # noqa: F401  (torch must be importable before transformers picks a backend)
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = Path(path).expanduser()
    state_dict = _read(path)
    try:
        config = infer_config(state_dict, activation)
        weights = convert_open_clip_state_dict(state_dict, config)
    except ValueError as exc:
        raise TrsllavaError(f"{path}: {exc}") from None
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(Path(tokenizer_source).expanduser()) if Path(tokenizer_source).expanduser().is_dir()
                                                  else tokenizer_source)
    except (OSError, ValueError) as exc:  # not found / not a valid repo id
        raise TrsllavaError(
            f"the CLIP tokenizer '{tokenizer_source}' for {path.name} could not be loaded ({str(exc).splitlines()[0]}); "
            f"give a local folder holding it (e.g. a download of {DEFAULT_TOKENIZER})"
        ) from exc
    # equal sizes, not just "fits": transformers 5 answers an unreachable hub id with an empty tokenizer
    # (2 special tokens) rather than an error, which would silently embed every caption alike
    if len(tokenizer) != config.text_config.vocab_size:
        raise TrsllavaError(
            f"the CLIP tokenizer '{tokenizer_source}' has {len(tokenizer)} tokens where {path.name} has "
            f"{config.text_config.vocab_size} token embeddings: not this checkpoint's tokenizer"
            + (" (or not available offline: give a local folder holding it)" if len(tokenizer) < 10 else "")
        )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(tokenizer, name) is not None:
            setattr(config.text_config, name, getattr(tokenizer, name))
    tokenizer.model_max_length = config.text_config.max_position_embeddings
    model = CLIPModel(config)
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:  # a transformers version with another layout: say so rather than run half-random
        raise TrsllavaError(f"{path}: converted weights do not fit transformers' CLIPModel (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    model.load_state_dict(weights, strict=True)
    model.eval()
    size = config.vision_config.image_size
    image_processor = CLIPImageProcessor(  # open_clip's transform: Resize(size, bicubic), CenterCrop(size), OpenAI mean/std
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_resize=True, do_center_crop=True,
        do_normalize=True, do_convert_rgb=True,
    )
    log.info("open_clip %s: ViT %d layers width %d patch %d image %d, text %d layers width %d, projection %d (%s)",
             path.name, config.vision_config.num_hidden_layers, config.vision_config.hidden_size, config.vision_config.patch_size,
             size, config.text_config.num_hidden_layers, config.text_config.hidden_size, config.projection_dim, activation)
    return model, CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


def convert_to_folder(checkpoint, tokenizer_source: str, out_dir, activation: str = "gelu") -> Path:
    """Write an open_clip ViT checkpoint as a Hugging Face CLIP folder (config, safetensors, tokenizer,
    processor), which ``baselines.clip.models.<name>.model`` then loads like any HF checkpoint."""
    model, processor = load_open_clip_checkpoint(checkpoint, tokenizer_source, activation)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)
    return out_dir
