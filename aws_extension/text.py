"""Numbers as a person reads them in a message: sizes and counts."""

from __future__ import annotations

from typing import Optional

UNITS = (("GB", 1e9), ("MB", 1e6), ("KB", 1e3))


def size_text(size: Optional[int]) -> str:
    """"1.5 GB", "3.2 MB", "4.0 KB", "512 bytes", "1 byte"; "" when unknown."""
    if size is None:
        return ""
    for unit, scale in UNITS:
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return count_text(size, "byte")


def count_text(count: int, word: str, plural: Optional[str] = None) -> str:
    """"1 image", "2 images" ("1 dataset", "3 datasets")."""
    return f"{count} {word if count == 1 else plural or word + 's'}"
