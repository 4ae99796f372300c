"""Query and document prompts of asymmetric encoders (config keys of every vector encoder).

Instruction and prefix models embed a search query and a searched passage differently: E5 wants
``"query: "`` / ``"passage: "``, nomic-embed ``"search_query: "`` / ``"search_document: "``, BGE an
instruction before queries only, Qwen3-Embedding an ``Instruct: ...\\nQuery:`` line before queries
only. An entry gives them as

  query_prompt / document_prompt   explicit strings (either may be left out: no prompt on that side)
  prompts: {query: ..., document: ...}   the same, as one mapping
  prompts: model                   the model's own prompts (sentence-transformers only: the ``prompts``
                                   of its config_sentence_transformers.json, chosen by the names
                                   ``encode_query`` / ``encode_document`` look for: ``query``, and the
                                   first of ``document``, ``passage``, ``corpus``). Read from the file:
                                   sentence-transformers 6 adds an empty ``document`` prompt to every
                                   loaded model, so its own ``encode_document`` gives E5 no prompt.

and the prompt is prepended to the text. The two retrieval directions give the roles (encoders.base):
text-to-image queries are the human captions, image-to-text queries the generated texts. An empty
prompt is no prompt, so an encoder whose two prompts are equal (or absent) stays symmetric: one cache,
one matrix.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import TrsllavaError
from .base import ROLES, Role

MODEL_PROMPTS = "model"
# sentence-transformers' encode_query / encode_document: the prompt names they look for, in order
MODEL_PROMPT_NAMES: dict[Role, tuple[str, ...]] = {"query": ("query",), "document": ("document", "passage", "corpus")}


def role_prompts(name: str, entry: dict, model_prompts: Callable[[], dict] | None = None) -> dict[Role, str | None]:
    """The prompt of each role for encoder ``name`` (config ``entry``): a string, or None for none.

    ``model_prompts`` returns the model's own ``{prompt name: text}`` (read only for ``prompts:
    model``); an encoder without it (an API) rejects ``prompts: model``. Raises TrsllavaError naming
    the key for a malformed or contradictory entry."""
    where = f"config: encoders.{name}"
    prompts = entry.get("prompts")
    explicit = {role: entry.get(f"{role}_prompt") for role in ROLES}
    if prompts is not None and any(value is not None for value in explicit.values()):
        raise TrsllavaError(f"{where}: give either prompts or query_prompt/document_prompt, not both")
    if prompts is None:
        chosen = explicit
    elif prompts == MODEL_PROMPTS:
        if model_prompts is None:
            raise TrsllavaError(f"{where}.prompts: 'model' (the model's configured prompts) needs a sentence-transformers "
                                f"model; give query and document strings instead")
        own = model_prompts() or {}
        chosen = {role: next((own[key] for key in MODEL_PROMPT_NAMES[role] if key in own), None) for role in ROLES}
    elif isinstance(prompts, dict):
        unknown = sorted(set(prompts) - set(ROLES))
        if unknown:
            raise TrsllavaError(f"{where}.prompts: unknown role(s) {unknown}; the roles are query and document")
        chosen = {role: prompts.get(role) for role in ROLES}
    else:
        raise TrsllavaError(f"{where}.prompts is {prompts!r}: expected 'model' or a mapping {{query: ..., document: ...}}")
    for role, value in chosen.items():
        if value is not None and not isinstance(value, str):
            raise TrsllavaError(f"{where}: the {role} prompt is {value!r}, not a string")
    return {role: value or None for role, value in chosen.items()}  # "" is no prompt (Qwen3's document side)


def with_prompt(prompt: str | None, texts: list[str]) -> list[str]:
    """``texts`` with ``prompt`` prepended (sentence-transformers' ``prompt=`` does the same)."""
    return list(texts) if not prompt else [prompt + text for text in texts]
