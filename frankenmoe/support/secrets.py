"""Keeping Hub tokens out of everything frankenmoe prints or writes."""

from __future__ import annotations

import os

TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def known_tokens() -> set[str]:
    """Every token this process could send: the environment's and huggingface_hub's."""
    tokens = {os.environ.get(v, "") for v in TOKEN_VARIABLES}
    try:
        from huggingface_hub import get_token

        tokens.add(get_token() or "")
    except Exception:  # a broken token file must not turn an error report into another error
        pass
    return {t for t in tokens if len(t) >= 8}


def scrub(text: str) -> str:
    """`text` with every known token replaced by ***."""
    for token in known_tokens():
        text = text.replace(token, "***")
    return text
