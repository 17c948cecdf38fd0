"""The hairstyle catalogue: ids, localized names and the server-side prompt template.

The user's optional text is only ever appended to a template, length-limited and
stripped of control characters; it never replaces the template.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CATALOGUE = Path(__file__).resolve().parent / "hairstyles.json"
MAX_USER_PROMPT = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


@dataclass(frozen=True)
class Hairstyle:
    id: str
    names: dict[str, str]
    prompt: str

    def name(self, locale: str) -> str:
        return self.names.get(locale) or self.names["en"]


@lru_cache(maxsize=1)
def catalogue() -> dict[str, Hairstyle]:
    raw = json.loads(CATALOGUE.read_text(encoding="utf-8"))
    return {s["id"]: Hairstyle(s["id"], s["names"], s["prompt"]) for s in raw["styles"]}


def compose_prompt(style: Hairstyle, user_prompt: str | None) -> str:
    extra = _CONTROL.sub(" ", user_prompt or "").strip()[:MAX_USER_PROMPT]
    if not extra:
        return style.prompt
    return f"{style.prompt} Additional request from the user (hair only): {extra}"
