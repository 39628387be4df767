"""The tab keeps itself current in Chromium: the endpoint lists follow an endpoint from Creating to InService with
no Refresh, and stop asking AWS once every endpoint is settled; 'from WebUI' says where paths may come from."""

from __future__ import annotations

import re
import time

import pytest

from test_ui_tab import choose, fast_endpoints, settled, wait_idle, wait_value  # noqa: F401 - fixtures
from aws_extension.core.endpoints import delete_endpoint
from aws_extension.ui import endpoints as ui_endpoints

expect = pytest.importorskip("playwright.sync_api").expect


@pytest.fixture
def listings(monkeypatch) -> list:
    """The time of each ListEndpoints the emulator answers (the tab and the emulator share this process)."""
    from moto.sagemaker.models import SageMakerModelBackend

    calls, original = [], SageMakerModelBackend.list_endpoints

    def counted(self, *args, **kwargs):
        calls.append(time.monotonic())
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SageMakerModelBackend, "list_endpoints", counted)
    return calls


@pytest.mark.usefixtures("fast_endpoints")
def test_endpoint_lists_follow_a_creation_then_stop_asking(tab, aws, emulator, listings):
    emulator.creating_seconds = 4.0
    tab.click("#sagemaker-deploy")
    text = wait_value(tab, "sagemaker-deploy-result", "Endpoint deployment started")
    name = re.search(r"started: (esd-async-[a-z0-9]{5})", text).group(1)
    wait_value(tab, "sagemaker-endpoint-result", "1 endpoint(s).")  # the deploy lists it at once
    choose(tab, "sagemaker-endpoints", f"{name} (Creating", exact=False)
    following = time.monotonic()

    # no Refresh: the list, the user's choice in it, and Generate's list of InService endpoints follow by themselves
    chosen = tab.locator("#sagemaker-endpoints input")
    expect(chosen).to_have_value(re.compile(rf"^{name} \(InService, .* — 1 × ml\.g5\.2xlarge"), timeout=20_000)
    expect(tab.locator("#sagemaker-gen-endpoint input")).to_have_value(name)
    settled_at = time.monotonic()
    polls = [t for t in listings if following <= t <= settled_at]
    assert 1 <= len(polls) <= (settled_at - following) / ui_endpoints.WATCH_SECONDS + 2, polls

    # all settled: nothing more is asked, however long the page stays open
    seen = len(listings)
    tab.wait_for_timeout(6 * ui_endpoints.WATCH_SECONDS * 1000)
    assert len(listings) == seen
    expect(chosen).to_have_value(re.compile(rf"^{name} \(InService, "))
    delete_endpoint(aws, name)


def test_from_webui_names_the_folders_paths_may_come_from(tab, tmp_path):
    folders = tab.locator("#sagemaker-webui-folders").last  # the Markdown's elem_id is on its wrapper too
    expect(folders).to_be_visible()  # "from WebUI" is the sub-tab the page opens on
    expect(folders).to_contain_text(str((tmp_path / "models").resolve()))
