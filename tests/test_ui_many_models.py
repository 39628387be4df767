"""10,000 cloud checkpoints in the tab, in Chromium: listed as the page opens, and one found by typing part of its
name into the list (gradio's dropdown filters as you type)."""

from __future__ import annotations

from playwright.sync_api import expect

from many_models import name_of, seed_checkpoints, sha256_of
from test_ui_tab import open_tab, wait_idle, wait_value

MANY = 10_000


def test_ten_thousand_models_list_and_filter_as_you_type(aws, tab):
    seed_checkpoints(aws.bucket, MANY)
    tab.reload()
    tab.wait_for_selector("#sagemaker-connection")
    open_tab(tab, "Models in the Cloud")
    wait_value(tab, "sagemaker-cloud-details", f"{MANY} model(s) in the cloud.", timeout=60_000)
    box = tab.locator("#sagemaker-cloud-models input")
    box.click()
    box.press_sequentially("model-0987", delay=20)
    shown = tab.locator("#sagemaker-cloud-models li.item")
    expect(shown).to_have_count(10)  # model-09870 … model-09879
    shown.filter(has_text=name_of(9876)).first.click()
    wait_value(tab, "sagemaker-cloud-details", f"sha256: {sha256_of(9876)}")
    wait_idle(tab)
