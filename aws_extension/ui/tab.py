"""The whole Amazon SageMaker tab, the same in the WebUI and standalone."""

from __future__ import annotations

import gradio as gr

from . import connection, datasets, endpoints, generate, models
from .context import TabContext


def build_tab(ctx: TabContext, standalone: bool = False) -> gr.Blocks:
    """standalone: our own launcher, where the tab also generates (in the WebUI, txt2img and img2img do)."""
    with gr.Blocks(analytics_enabled=False) as tab:
        line = connection.build(ctx)
        loaders = [*models.build(ctx), *endpoints.build(ctx), *datasets.build(ctx)]
        if standalone:
            generate.build(ctx)
        tab.load(lambda: connection.status_line(ctx), None, line)
        for fn, inputs, outputs in loaders:  # the lists are filled as the page opens, not at the first Refresh
            tab.load(fn, inputs, outputs)
    return tab
