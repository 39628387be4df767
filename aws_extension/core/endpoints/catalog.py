"""Our endpoints as SageMaker reports them: list (newest first), describe one, delete one with all its pieces."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from typing import Dict, List, Optional

from ..aws import Aws, iso, translate
from ..compat import BaseModel
from ..errors import NotFound, Refused, UserError
from . import scaling

log = logging.getLogger(__name__)

# Approximate on-demand list prices of SageMaker real-time/async hosting in us-east-1, USD per instance-hour, for the
# instance types the tab offers, as published on https://aws.amazon.com/sagemaker/pricing/ (known as of 2025-06).
# A guide to what an endpoint costs while it runs, not a bill: other regions and later price changes differ.
PRICES_AS_OF = "2025-06"
HOURLY_USD = {
    "ml.g4dn.xlarge": 0.736, "ml.g4dn.2xlarge": 0.94,
    "ml.g5.xlarge": 1.408, "ml.g5.2xlarge": 1.515, "ml.g5.4xlarge": 2.03, "ml.g5.8xlarge": 3.06, "ml.g5.12xlarge": 7.09,
    "ml.g6.xlarge": 1.006, "ml.g6.2xlarge": 1.222, "ml.g6e.xlarge": 2.326, "ml.g6e.2xlarge": 2.803,
    "ml.p4d.24xlarge": 37.688, "ml.p5.48xlarge": 113.07,
}


def hourly_cost(instance_type: Optional[str], count: int = 1) -> str:
    """What that many instances cost per hour ("~$1.52/h"), or where to look for a type not in the table."""
    price = HOURLY_USD.get(instance_type or "")
    if price is None:
        return "price: see aws.amazon.com/sagemaker/pricing"
    # half up, as a price is read ($1.515 -> $1.52), not binary floating point's half-even
    total = (Decimal(str(price)) * count).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    return f"~${total}/h"


def running_text(instance_type: Optional[str], count: int) -> str:
    """"1 × ml.g5.2xlarge (~$1.52/h)": what runs, and what it costs while it does."""
    return f"{count} × {instance_type} ({hourly_cost(instance_type, count)})"


class EndpointRecord(BaseModel):
    name: str
    type: str = "unknown"  # async | real-time | unknown
    status: str
    failure_reason: Optional[str] = None
    instance_type: Optional[str] = None
    instance_count: Optional[int] = None  # current, as SageMaker reports it
    autoscaling: bool = False
    min_instances: Optional[int] = None
    max_instances: Optional[int] = None
    scaling_applied: bool = False  # the actual autoscaling matches the wanted one (in the tags)
    created: str = ""
    last_modified: str = ""

    @property
    def label(self) -> str:
        """What the endpoint dropdown shows: `esd-async-ab12c (InService, 2026-11-25 18:02)`."""
        when = self.last_modified or self.created
        try:
            when = datetime.fromisoformat(when).strftime("%Y-%m-%d %H:%M")
        except ValueError:
            pass
        return f"{self.name} ({self.status}, {when})" if when else f"{self.name} ({self.status})"


def _describe_raw(aws: Aws, name: str) -> Optional[dict]:
    try:
        return aws.client("sagemaker").describe_endpoint(EndpointName=name)
    except Exception as exc:
        if scaling.missing(exc):
            return None
        with translate(f"reading endpoint {name}"):
            raise


def _instance_type(aws: Aws, config_name: Optional[str]) -> Optional[str]:
    if not config_name:
        return None
    try:
        variants = aws.client("sagemaker").describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    except Exception as exc:
        if scaling.missing(exc):
            return None  # the config was deleted under a live endpoint: still list the endpoint
        with translate(f"reading endpoint config {config_name}"):
            raise
    return variants[0].get("InstanceType") if variants else None


def _record(aws: Aws, raw: dict, tags: Dict[str, str], state: Optional[Dict[str, dict]]) -> EndpointRecord:
    name = raw["EndpointName"]
    # moto omits AsyncInferenceConfig from describe_endpoint; our own tag says the type either way
    endpoint_type = tags.get(scaling.TAG_TYPE) or ("async" if raw.get("AsyncInferenceConfig") else "unknown")
    wish = scaling.Scaling.from_tag(tags.get(scaling.TAG_SCALING))
    variants = raw.get("ProductionVariants") or [{}]
    return EndpointRecord(
        name=name, type=endpoint_type, status=raw["EndpointStatus"], failure_reason=raw.get("FailureReason"),
        instance_type=_instance_type(aws, raw.get("EndpointConfigName")),
        instance_count=variants[0].get("CurrentInstanceCount"),
        autoscaling=bool(wish and wish.enabled),
        min_instances=wish.bounds(endpoint_type)[0] if wish else None,
        max_instances=wish.bounds(endpoint_type)[1] if wish else None,
        scaling_applied=state is not None and scaling.is_applied(state, name, endpoint_type, wish),
        created=iso(raw.get("CreationTime")), last_modified=iso(raw.get("LastModifiedTime")),
    )


def _state(aws: Aws) -> Optional[Dict[str, dict]]:
    try:
        return scaling.scaling_state(aws)
    except UserError as exc:  # e.g. no autoscaling permission: the list still works
        log.warning("%s", exc)
        return None


def list_endpoints(aws: Aws, reconcile: bool = True) -> List[EndpointRecord]:
    """Endpoints tagged ours, newest first; applies pending autoscaling first (listing is one trigger)."""
    items = scaling.our_endpoints(aws)
    if reconcile and items:
        try:
            scaling.reconcile_endpoints(aws, items)
        except UserError as exc:  # a scaling problem must not hide the endpoints
            log.warning("%s", exc)
    state = _state(aws) if items else {}
    found = []
    for item in items:
        raw = _describe_raw(aws, item["name"])
        if raw is not None:  # deleted between the listing and now
            found.append((raw.get("CreationTime"), _record(aws, raw, item["tags"], state)))
    # by the full timestamp: the ISO text keeps whole seconds only
    found.sort(key=lambda pair: (pair[0] or datetime.min.replace(tzinfo=timezone.utc), pair[1].name), reverse=True)
    return [record for _, record in found]


def describe(aws: Aws, name: str) -> EndpointRecord:
    raw = _describe_raw(aws, name)
    if raw is None:
        raise NotFound(f"Endpoint '{name}' does not exist.")
    return _record(aws, raw, scaling.tags_of(aws, raw["EndpointArn"]), _state(aws))


def _ours_or_none(aws: Aws, kind: str, name: str) -> Optional[bool]:
    """None if the model / endpoint config does not exist, else whether it is tagged ours."""
    sm = aws.client("sagemaker")
    try:
        if kind == "model":
            arn = sm.describe_model(ModelName=name)["ModelArn"]
        else:
            arn = sm.describe_endpoint_config(EndpointConfigName=name)["EndpointConfigArn"]
    except Exception as exc:
        if scaling.missing(exc):
            return None
        with translate(f"reading {kind} {name}"):
            raise
    return scaling.is_ours(scaling.tags_of(aws, arn))


def _delete(aws: Aws, kind: str, name: str) -> bool:
    sm = aws.client("sagemaker")
    calls = {"endpoint": (sm.delete_endpoint, "EndpointName"), "endpoint config": (sm.delete_endpoint_config,
             "EndpointConfigName"), "model": (sm.delete_model, "ModelName")}
    call, arg = calls[kind]
    with translate(f"deleting the {kind} of endpoint {name}"):
        return scaling.tolerant(call, **{arg: name})


def delete_endpoint(aws: Aws, name: str) -> None:
    """Scaling, endpoint, endpoint config, model: whatever is left of them. NotFound if nothing was."""
    raw = _describe_raw(aws, name)
    if raw is not None and not scaling.is_ours(scaling.tags_of(aws, raw["EndpointArn"])):
        raise Refused(f"Endpoint '{name}' was not deployed by this tool: delete it in the SageMaker console.")
    existed = scaling.remove_scaling(aws, name)
    if raw is not None:
        existed |= _delete(aws, "endpoint", name)
    # a model or config of that name that someone else made is not ours to delete
    for kind in ("endpoint config", "model"):
        if _ours_or_none(aws, kind, name):
            existed |= _delete(aws, kind, name)
    if not existed:
        raise NotFound(f"Endpoint '{name}' does not exist, and nothing of it is left to delete.")
