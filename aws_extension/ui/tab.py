"""The whole Amazon SageMaker tab, the same in the WebUI and standalone."""

from __future__ import annotations

import gradio as gr

from . import connection, datasets, endpoints, generate, models
from .context import TabContext


def build_tab(ctx: TabContext, standalone: bool = False) -> gr.Blocks:
    """standalone: our own launcher, where the tab also generates (in the WebUI, txt2img and img2img do)."""
    with gr.Blocks(analytics_enabled=False) as tab:
        line = connection.build(ctx)
        watch = endpoints.Watch(ctx)  # the endpoint lists follow endpoints in transition (Creating → InService)
        loaders = models.build(ctx)
        followed = endpoints.build(ctx, watch)
        loaders += datasets.build(ctx)
        if standalone:
            models_loader, serving_loader = generate.build(ctx, watch)
            loaders.append(models_loader)
            followed.append(serving_loader)
        tab.load(lambda: connection.status_line(ctx), None, line)
        for fn, inputs, outputs in loaders:  # the lists are filled as the page opens, not at the first Refresh
            tab.load(fn, inputs, outputs)
        for fn, inputs, outputs in followed:
            watch.after(tab.load(fn, inputs, outputs))
        watch.wire()
    return tab
