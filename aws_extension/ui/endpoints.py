"""Cloud Assets Management: deploy a SageMaker endpoint, list and delete endpoints."""

from __future__ import annotations

import asyncio
import os
from typing import Callable, Optional

import gradio as gr

from ..core.endpoints import EndpointSpec, delete_endpoint, deploy, list_endpoints
from ..core.endpoints.catalog import HOURLY_USD, hourly_cost, running_text
from ..core.endpoints.deploy import initial_instances
from ..core.models.lookup import cloud_checkpoints
from .context import GRADIO_4, NOT_DELETED, TabContext, choice_update, confirm_delete, handled, log, message

INSTANCE_TYPES = ["ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge",
                  "ml.g5.8xlarge", "ml.g5.12xlarge", "ml.g6.xlarge", "ml.g6.2xlarge", "ml.g6e.xlarge",
                  "ml.g6e.2xlarge", "ml.p4d.24xlarge", "ml.p5.48xlarge"]
COUNTS = [str(n) for n in range(0, 11)]
NO_PRELOAD = "None"  # the preload dropdown's "no checkpoint": the first request loads the one it names
# While an endpoint is in one of these states the lists re-read the endpoints every WATCH_SECONDS (one listing per
# page), and not at all once every endpoint is settled: a creation takes minutes, a poll costs API calls.
TRANSITIONAL = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")
WATCH_SECONDS = float(os.environ.get("SD_SAGEMAKER_WATCH_SECONDS") or 20)


class Watch:
    """The page's endpoint lists follow the endpoints by themselves while any is in transition.

    Each listing notes in the page's state whether something is in transition; the events that list (page open,
    Refresh, Deploy, Delete) are followed by a loop that re-lists while it is so. A page's newest loop is its only
    one; the loop sleeps without holding a thread, and ends (no more calls) once all are settled.
    """

    def __init__(self, ctx: TabContext):
        self.ctx = ctx
        self.page = gr.State({})  # per page, passed by reference: "busy", the running loop, each list's choice
        self.views: list = []  # (dropdown, key of its choice in the page, render(records, choice) -> update)
        self.listings: list = []  # the events whose listing can start a loop

    def listed(self, page: dict) -> list:
        records = list_endpoints(self.ctx.aws())  # also attaches autoscaling to endpoints now InService
        page["busy"] = any(e.status in TRANSITIONAL for e in records)
        return records

    def view(self, dropdown, key: str, render: Callable) -> None:
        """A list the loop updates, keeping the page's choice (recorded as it changes: the loop cannot read it)."""
        def chosen(value, page):
            page[key] = value

        dropdown.change(chosen, [dropdown, self.page], None, queue=False, show_progress="hidden")
        self.views.append((dropdown, key, render))

    def after(self, event) -> None:
        self.listings.append(event)

    async def loop(self, page: dict):
        mine = object()
        page["loop"] = mine
        for _, key, _ in self.views:  # the listing before this loop changed what the page shows
            page.pop("shown " + key, None)
        while page.get("busy"):
            await asyncio.sleep(WATCH_SECONDS)
            if page.get("loop") is not mine:  # a newer listing started its own loop
                return
            try:
                records = await asyncio.get_running_loop().run_in_executor(None, self.listed, page)
            except Exception as exc:  # noqa: BLE001 - Refresh says what is wrong; no retries against a failing API
                log.warning("Amazon SageMaker: following the endpoints stopped: %s", exc)
                return
            updates = []
            for _, key, render in self.views:  # a list that did not change is left alone (it may be open)
                update = render(records, page.get(key))
                updates.append(gr.update() if update == page.get("shown " + key) else update)
                page["shown " + key] = update
            # a yield even with nothing new: a page that went away ends its loop there
            yield updates[0] if len(updates) == 1 else tuple(updates)  # gradio takes one output's value bare

    def wire(self) -> None:
        """Once every list is built: the loop after each listing event."""
        outputs = [dropdown for dropdown, _, _ in self.views]
        # gradio 4 runs one call of an event at a time by default: every page's loop must run
        unlimited = {"concurrency_limit": None} if GRADIO_4 else {}
        for event in self.listings:
            event.then(self.loop, self.page, outputs, show_progress="hidden", **unlimited)


def name_of(choice: Optional[str]) -> Optional[str]:
    """The endpoint a choice names (names have no spaces): the label changes with its status, the name does not."""
    return choice.split(" ", 1)[0] if choice else None


def endpoint_choice(e) -> str:
    """name+status+time, as the original guide shows it, plus what the user pays attention to."""
    text = e.label
    if e.failure_reason:
        text += f" — {e.failure_reason}"
    elif e.status == "InService" and e.instance_count is not None:
        cost = f", {hourly_cost(e.instance_type, e.instance_count)}" if e.instance_type in HOURLY_USD else ""
        text += f" — {e.instance_count} × {e.instance_type}{cost}"
    return text


def defaults_text() -> str:
    """What Deploy without the advanced panel makes, from the core's own defaults, with its price while running."""
    spec = EndpointSpec()
    return (f"Defaults: {spec.endpoint_type.capitalize()}, {spec.instance_type} ({hourly_cost(spec.instance_type)} "
            f"while an instance runs), autoscaling {spec.min_instances}–{spec.max_instances} instances: it scales to "
            f"zero when idle.")


def deploy_form(ctx: TabContext) -> None:
    gr.Markdown(f"#### Deploy New SageMaker Endpoint\n{defaults_text()}")
    advanced = gr.Checkbox(False, label="Advanced Endpoint Configuration", elem_id="sagemaker-advanced")
    with gr.Column(visible=False) as panel:
        name = gr.Textbox(label="Endpoint Name (Optional)", elem_id="sagemaker-endpoint-name")
        kind = gr.Radio(["Async", "Real-time"], value="Async", label="Endpoint Type", elem_id="sagemaker-endpoint-type")
        instance = gr.Dropdown(INSTANCE_TYPES, value="ml.g5.2xlarge", label="Instance Type",
                               elem_id="sagemaker-instance-type")
        scaling = gr.Checkbox(True, label="Enable Autoscaling", elem_id="sagemaker-autoscaling")
        fewest = gr.Dropdown(COUNTS, value="0", label="Min Instance Number", elem_id="sagemaker-min-instances")
        most = gr.Dropdown(COUNTS[1:], value="1", label="Max Instance Number", elem_id="sagemaker-max-instances")
        # without autoscaling the endpoint keeps its one instance: min and max would be ignored, so they are locked
        scaling.change(lambda on: (gr.update(interactive=on), gr.update(interactive=on)), scaling, [fewest, most])
        preload = gr.Dropdown([NO_PRELOAD], value=NO_PRELOAD, label="Checkpoint to preload",
                              info="Loaded before the endpoint takes requests, so the first one is not slowed by it.",
                              elem_id="sagemaker-preload-checkpoint")
    button = gr.Button("Deploy", variant="primary", elem_id="sagemaker-deploy")
    output = gr.Textbox(label="Deploy result", interactive=False, elem_id="sagemaker-deploy-result")

    @handled
    def start(use_advanced, name, kind, instance, most, scaling, fewest, checkpoint):
        spec = EndpointSpec()
        if use_advanced:
            spec = EndpointSpec(name=name, endpoint_type=kind, instance_type=instance, max_instances=int(most),
                                autoscaling=scaling, min_instances=int(fewest) if scaling else None,
                                preload_checkpoint=None if checkpoint in (None, NO_PRELOAD) else checkpoint)
        record = deploy(ctx.aws(), spec)  # its watcher attaches the autoscaling once the endpoint is InService
        text = f"Endpoint deployment started: {record.name} ({record.status})."
        running = running_text(spec.instance_type, initial_instances(spec))
        if spec.autoscaling:
            return f"{text} Autoscaling will be attached once it is InService; until then it runs {running}."
        return f"{text} It runs {running} until it is deleted."

    def open_advanced(on, keep):
        if not on:
            return gr.update(visible=False), gr.update()
        try:  # the cloud's checkpoints as the panel opens; without them, deploying still works
            names = cloud_checkpoints(ctx.aws())
        except Exception:  # noqa: BLE001 - the connection line already says what is wrong with AWS
            names = []
        return gr.update(visible=True), choice_update([NO_PRELOAD, *names], keep if keep in names else NO_PRELOAD)

    advanced.change(open_advanced, [advanced, preload], [panel, preload])
    # real-time endpoints cannot scale to zero: the minimum follows the type
    kind.change(lambda k: gr.update(value="0" if k == "Async" else "1"), kind, fewest)
    return button.click(start, [advanced, name, kind, instance, most, scaling, fewest, preload], output)


def management(ctx: TabContext, watch: Watch, deployed) -> None:
    gr.Markdown("#### Inference Endpoint Management")
    with gr.Row():
        endpoints = gr.Dropdown([], label="Inference Endpoint Management", elem_id="sagemaker-endpoints")
        refresh = gr.Button("Refresh", elem_id="sagemaker-endpoints-refresh", scale=0)
    delete = gr.Button("Delete", variant="stop", elem_id="sagemaker-endpoint-delete")
    output = gr.Textbox(label="Endpoint result", interactive=False, elem_id="sagemaker-endpoint-result")
    names: dict = {}

    def render(listed: list, keep: Optional[str]):
        names.clear()
        names.update({endpoint_choice(e): e.name for e in listed})
        kept = next((c for c, n in names.items() if n == name_of(keep)), None)
        return choice_update(list(names), kept, first=False)

    def listing(page: dict, keep=None):
        try:
            listed = watch.listed(page)
        except Exception as exc:  # noqa: BLE001
            return choice_update([]), message(exc)
        return render(listed, keep), f"{len(names)} endpoint(s)." if names else "No endpoints yet."

    def remove(choice, page):
        if choice == "":
            return gr.update(), NOT_DELETED
        if choice not in names:
            return gr.update(), "Choose an endpoint first."
        try:
            name = names.pop(choice)
            delete_endpoint(ctx.aws(), name)
        except Exception as exc:  # noqa: BLE001
            return gr.update(), message(exc)
        listing(page)  # refreshes `names`; if that fails, the list is still right less this endpoint
        # nothing chosen afterwards, so a second click cannot delete another endpoint
        return gr.update(choices=list(names), value=None), f"Endpoint delete completed: {name}"

    def relist(choice, page):
        return listing(page, choice)

    watch.view(endpoints, "endpoint", render)
    watch.after(refresh.click(relist, [endpoints, watch.page], [endpoints, output]))
    watch.after(delete.click(remove, [endpoints, watch.page], [endpoints, output],
                             **confirm_delete("Delete endpoint {} and everything billable with it (its config, model "
                                              "and autoscaling)?")))
    watch.after(deployed.then(relist, [endpoints, watch.page], [endpoints, output]))  # the new endpoint shows at once
    return relist, [endpoints, watch.page], [endpoints, output]


def build(ctx: TabContext, watch: Watch) -> list:
    """The section; returns its list's loader (fn, inputs, outputs), run when the page opens (and followed by
    `watch`'s loop, like every listing here: tab.py wires it once all lists are built)."""
    gr.Markdown("### Cloud Assets Management")
    deployed = deploy_form(ctx)
    return [management(ctx, watch, deployed)]
