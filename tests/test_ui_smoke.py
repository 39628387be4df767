"""The tab opens in a real browser and shows where it is connected."""

from __future__ import annotations


def test_connection_line_names_account_region_and_bucket(tab, aws):
    line = tab.locator("#sagemaker-connection").last  # gradio 3.41 repeats a Markdown elem_id on its wrapper
    line.get_by_text("Account 123456789012").wait_for()
    assert f"bucket {aws.bucket} (ready)" in line.inner_text()


def test_the_footer_offers_no_api_that_is_not_there(tab):
    """The standalone tab serves no public API: its footer must not offer one."""
    tab.locator("footer").first.wait_for()
    footer = tab.locator("footer").first.inner_text()
    assert "Use via API" not in footer and "API" not in footer
    assert "gradio" in footer.lower()  # the footer itself is there
