"""The hairstyle catalogue: ids, localized names and the server-side prompt template.

The user's optional text is only ever appended to a template, length-limited and
stripped of control characters; it never replaces the template.

A job keeps the prompt composed when it was accepted (`try_ons.composed_prompt`), so
renaming or removing a style, or a rolling deploy with two catalogues, never changes
or strands a job already accepted; only `hairfluencer retire-hairstyle`
(shared/tryons/retirement.py) fails the queued jobs of a style on purpose.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CATALOGUE = Path(__file__).resolve().parent / "hairstyles.json"
MAX_USER_PROMPT = 200
# A job's failure when its style was retired (`hairfluencer retire-hairstyle`), or
# when a job accepted before prompts were stored finds its style gone.
RETIRED = "tryon.hairstyle_retired"
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


def accepted_prompt(hairstyle_id: str, user_prompt: str | None,
                    stored: str | None) -> str | None:
    """The prompt a job runs with: the one stored when it was accepted; for a job
    accepted before prompts were stored, composed from this catalogue, or None if
    its style is no longer in it (never an exception: the job must end)."""
    if stored is not None:
        return stored
    style = catalogue().get(hairstyle_id)
    return compose_prompt(style, user_prompt) if style is not None else None
