"""Cloud Assets Management: deploy a SageMaker endpoint, list and delete endpoints."""

from __future__ import annotations

import gradio as gr

from ..endpoints import EndpointSpec, delete_endpoint, deploy, list_endpoints
from ..endpoints.catalog import HOURLY_USD, hourly_cost, running_text
from ..endpoints.deploy import initial_instances
from ..generation import cloud_checkpoints
from .context import NOT_DELETED, TabContext, choice_update, confirm_delete, handled, message

INSTANCE_TYPES = ["ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g5.xlarge", "ml.g5.2xlarge", "ml.g5.4xlarge",
                  "ml.g5.8xlarge", "ml.g5.12xlarge", "ml.g6.xlarge", "ml.g6.2xlarge", "ml.g6e.xlarge",
                  "ml.g6e.2xlarge", "ml.p4d.24xlarge", "ml.p5.48xlarge"]
COUNTS = [str(n) for n in range(0, 11)]
NO_PRELOAD = "None"  # the preload dropdown's "no checkpoint": the first request loads the one it names


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


def management(ctx: TabContext) -> None:
    gr.Markdown("#### Inference Endpoint Management")
    with gr.Row():
        endpoints = gr.Dropdown([], label="Inference Endpoint Management", elem_id="sagemaker-endpoints")
        refresh = gr.Button("Refresh", elem_id="sagemaker-endpoints-refresh", scale=0)
    delete = gr.Button("Delete", variant="stop", elem_id="sagemaker-endpoint-delete")
    output = gr.Textbox(label="Endpoint result", interactive=False, elem_id="sagemaker-endpoint-result")
    names: dict = {}

    def listing(keep=None):
        try:
            listed = list_endpoints(ctx.aws())  # also attaches autoscaling to endpoints now InService
        except Exception as exc:  # noqa: BLE001
            return choice_update([]), message(exc)
        names.clear()
        names.update({endpoint_choice(e): e.name for e in listed})
        kept = next((c for c, n in names.items() if n == keep), None)
        return choice_update(list(names), kept, first=False), \
            f"{len(names)} endpoint(s)." if names else "No endpoints yet."

    def remove(choice):
        if choice == "":
            return gr.update(), NOT_DELETED
        if choice not in names:
            return gr.update(), "Choose an endpoint first."
        try:
            name = names.pop(choice)
            delete_endpoint(ctx.aws(), name)
        except Exception as exc:  # noqa: BLE001
            return gr.update(), message(exc)
        listing()  # refreshes `names`; if that fails, the list is still right less this endpoint
        # nothing chosen afterwards, so a second click cannot delete another endpoint
        return gr.update(choices=list(names), value=None), f"Endpoint delete completed: {name}"

    def relist(choice):
        return listing(names.get(choice))

    refresh.click(relist, endpoints, [endpoints, output])
    delete.click(remove, endpoints, [endpoints, output],
                 **confirm_delete("Delete endpoint {} and everything billable with it (its config, model and "
                                  "autoscaling)?"))
    return relist, [endpoints], [endpoints, output]


def build(ctx: TabContext) -> list:
    """The section; returns its list's loader (fn, inputs, outputs), run when the page opens and after a deploy."""
    gr.Markdown("### Cloud Assets Management")
    deployed = deploy_form(ctx)
    loader = management(ctx)
    deployed.then(*loader)  # the new endpoint shows in the list at once
    return [loader]
