"""The tab opens in a real browser and shows where it is connected."""

from __future__ import annotations


def test_connection_line_names_account_region_and_bucket(tab, aws):
    line = tab.locator("#sagemaker-connection").last  # gradio 3.41 repeats a Markdown elem_id on its wrapper
    line.get_by_text("Account 123456789012").wait_for()
    assert f"bucket {aws.bucket} (ready)" in line.inner_text()
