"""Commands on endpoints: deploy (waiting and attaching autoscaling by default), list, delete."""

from __future__ import annotations

import sys

from ..core.errors import NotFound, UserError
from .output import EXIT_FAILED, EXIT_OK, Cli, error

def endpoint_text(e) -> str:
    scaling = f"autoscaling {e.min_instances}-{e.max_instances}" if e.autoscaling else "no autoscaling"
    failure = f"  reason: {e.failure_reason}" if e.failure_reason else ""
    return f"{e.name}  {e.type}  {e.status}  {e.instance_type} x{e.instance_count}  {scaling}  created {e.created}{failure}"


def cmd_endpoints_deploy(cli: Cli) -> int:
    from ..core.endpoints import EndpointSpec, deploy, wait_until_settled
    from ..core.endpoints.deploy import initial_instances, running_cost

    a = cli.args
    spec = EndpointSpec(name=a.name, endpoint_type=a.endpoint_type, instance_type=a.instance_type,
                        min_instances=a.min, max_instances=a.max, autoscaling=not a.no_autoscaling,
                        role_arn=a.role_arn, image_uri=a.image_uri, preload_checkpoint=a.preload_checkpoint)
    record = deploy(cli.aws, spec, background=False)
    # AWS starts every endpoint with an instance; autoscaling (and so scale-to-zero) can only be attached once it is
    # InService. Waiting by default means no deploy is left billing for an instance nobody scales down.
    cost = running_cost(record.name, spec.instance_type, initial_instances(spec), spec.autoscaling)
    if a.wait:
        try:
            status = wait_until_settled(cli.aws, record.name,
                                        on_status=lambda s: print(f"{record.name}: {s}", file=sys.stderr, flush=True))
        except (KeyboardInterrupt, UserError) as exc:
            if not isinstance(exc, NotFound):  # stopped waiting, or still Creating: it may well come up and bill
                print(cost, file=sys.stderr)
            raise
        from ..core.endpoints import describe

        record = describe(cli.aws, record.name)
        if status != "InService":
            cli.out(record, endpoint_text)
            error(f"{record.name}: endpoint is {status}" + (f": {record.failure_reason}" if record.failure_reason else ""))
            return EXIT_FAILED
    cli.out(record, lambda e: f"Endpoint {'ready' if a.wait else 'deployment started'}: {endpoint_text(e)}")
    if not a.wait:
        print(cost, file=sys.stderr if cli.json else sys.stdout)
    return EXIT_OK


def cmd_endpoints_list(cli: Cli) -> int:
    from ..core.endpoints import list_endpoints

    cli.out(list_endpoints(cli.aws), lambda es: "\n".join(endpoint_text(e) for e in es) or "(none)")
    return EXIT_OK


def cmd_endpoints_delete(cli: Cli) -> int:
    from ..core.endpoints import delete_endpoint

    delete_endpoint(cli.aws, cli.args.name)
    cli.out({"deleted": cli.args.name}, lambda d: f"Endpoint delete completed: {d['deleted']}, with its config, model "
                                                  f"and autoscaling")
    return EXIT_OK
