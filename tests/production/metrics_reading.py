"""Reading a process group's scrape endpoint as Prometheus does."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=5)
    response.raise_for_status()
    return response.text


def counts(text: str) -> dict[str, float]:
    """Every counter and every histogram's _count, keyed as PromQL writes a series."""
    return _series(text, lambda kind, name: (kind == "counter" and name.endswith("_total")) or (
        kind == "histogram" and name.endswith("_count")))


def sums(text: str) -> dict[str, float]:
    """Every histogram's _sum, keyed as PromQL writes a series."""
    return _series(text, lambda kind, name: kind == "histogram" and name.endswith("_sum"))


def _series(text: str, wanted: Callable[[str, str], bool]) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if wanted(family.type, sample.name):
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()
            if value != before.get(key, 0.0)}


def label_values(text: str) -> list[tuple[str, str]]:
    """(series name, label value) for every label of every sample."""
    return [(sample.name, value) for family in text_string_to_metric_families(text)
            for sample in family.samples for value in sample.labels.values()]
