"""Sizes, counts and failures as a person reads them, in the CLI's and the tab's lines."""

from __future__ import annotations

from aws_extension.models.uploads import UploadResult
from aws_extension.text import count_text, size_text
from aws_extension.ui.context import result_lines


def test_sizes_keep_small_files_readable():
    assert [size_text(n) for n in (0, 1, 512, 4096, 3_200_000, 1_500_000_000)] == [
        "0 bytes", "1 byte", "512 bytes", "4.1 KB", "3.2 MB", "1.5 GB"]
    assert size_text(None) == ""


def test_counts_agree_with_their_number():
    assert [count_text(n, "image") for n in (0, 1, 2)] == ["0 images", "1 image", "2 images"]


def test_a_failure_names_its_item_once():
    failed = UploadResult(item="/etc/passwd", type="lora", status="failed",
                          error="/etc/passwd: is outside the WebUI's model folders.")
    small = UploadResult(item="tiny.pt", type="embedding", status="uploaded", size=1000, sha256="ab")
    assert result_lines([failed, small]).splitlines() == [
        "/etc/passwd: failed: is outside the WebUI's model folders.", "tiny.pt: uploaded, 1.0 KB, sha256 ab"]
