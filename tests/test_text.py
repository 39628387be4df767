"""Sizes, counts and failures as a person reads them, in the CLI's and the tab's lines."""

from __future__ import annotations

from aws_extension.core.models.uploads import UploadResult
from aws_extension.core.text import count_text, size_text
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


def test_a_moving_upload_says_its_speed_and_time_left():
    from aws_extension.core.models.transfer import Progress
    from aws_extension.core.text import Pace, duration_text
    from aws_extension.ui.context import progress_lines

    now = [100.0]
    render = progress_lines(Pace(clock=lambda: now[0]))
    total = 100_000_000
    assert render({"big.ckpt": Progress("big.ckpt", 0, total)}) == "big.ckpt: uploading 0% (0 bytes)"
    now[0] += 4  # 20 MB in 4 s: 5 MB/s, 80 MB to go
    assert render({"big.ckpt": Progress("big.ckpt", 20_000_000, total)}) == \
        "big.ckpt: uploading 20% (20.0 MB, 5.0 MB/s, 16 s left)"
    assert render({"big.ckpt": Progress("big.ckpt", total, total, "done")}) == "big.ckpt: done 100% (100.0 MB)"
    assert [duration_text(s) for s in (0.4, 59, 60, 185, 3600, 3725)] == [
        "0 s", "59 s", "1 min", "3 min 5 s", "1 h", "1 h 2 min"]
