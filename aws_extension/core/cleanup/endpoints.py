"""Pieces of our endpoints that outlived them: endpoint configs, models, scalable targets, alarms."""

from __future__ import annotations

import re
from typing import List, Optional, Set

from ..aws import Aws, iso, translate
from .orphan import Orphan
from ..errors import Refused
from ..endpoints import catalog, scaling

ALARM_SUFFIX = "-has-backlog-without-capacity"
RESOURCE = re.compile(r"^endpoint/([^/]+)/variant/[^/]+$")


def _live(aws: Aws) -> tuple:
    """(endpoint names, endpoint configs they use, models those configs use): none of these is an orphan."""
    sm = aws.client("sagemaker")
    with translate("listing endpoints"):
        names = {e["EndpointName"] for page in sm.get_paginator("list_endpoints").paginate() for e in page["Endpoints"]}
    configs: Set[str] = set()
    for name in names:
        raw = catalog._describe_raw(aws, name)
        if raw and raw.get("EndpointConfigName"):
            configs.add(raw["EndpointConfigName"])
    models: Set[str] = set()
    for config in configs:
        try:
            variants = sm.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
        except Exception as exc:
            if scaling.missing(exc):
                continue
            with translate(f"reading endpoint config {config}"):
                raise
        models |= {v["ModelName"] for v in variants if v.get("ModelName")}
    return names, configs, models


def _listed(aws: Aws, operation: str, key: str) -> list:
    with translate(f"listing SageMaker {key[:-1].lower()}s"):
        return [item for page in aws.client("sagemaker").get_paginator(operation).paginate() for item in page[key]]


def find_orphans(aws: Aws) -> List[Orphan]:
    endpoints, live_configs, live_models = _live(aws)
    orphans: List[Orphan] = []
    ours_configs: Set[str] = set()
    for config in _listed(aws, "list_endpoint_configs", "EndpointConfigs"):
        name = config["EndpointConfigName"]
        if name in live_configs or name in endpoints:
            continue
        if scaling.is_ours(scaling.tags_of(aws, config["EndpointConfigArn"])):
            ours_configs.add(name)
            created = iso(config.get("CreationTime"))
            orphans.append(Orphan(kind="endpoint-config", name=name, detail=f"created {created}, no endpoint uses it"))
    for model in _listed(aws, "list_models", "Models"):
        name = model["ModelName"]
        if name in live_models or name in endpoints:
            continue
        # ours by tag, or by sharing its name with one of our orphaned configs (deploy names all three alike)
        if name in ours_configs or scaling.is_ours(scaling.tags_of(aws, model["ModelArn"])):
            created = iso(model.get("CreationTime"))
            orphans.append(Orphan(kind="model", name=name, detail=f"created {created}, no endpoint uses it"))
    for rid, entry in sorted(scaling.scaling_state(aws).items()):
        match = RESOURCE.match(rid)
        if not match or match.group(1) in endpoints:
            continue
        ours = sorted(scaling.our_policy_names(match.group(1)) & set(entry["policies"]))
        if not ours:
            continue  # someone else's scaling: not ours to judge
        if entry["min"] is not None:
            orphans.append(Orphan(kind="scalable-target", name=rid, detail=(
                f"min {entry['min']}, max {entry['max']}, policies {', '.join(ours)}; endpoint {match.group(1)} is gone")))
        else:  # policies whose target is gone (AWS deletes them together; moto leaves them)
            orphans += [Orphan(kind="scaling-policy", name=f"{rid}/{p}", detail=f"endpoint {match.group(1)} is gone")
                        for p in ours]
    with translate("listing CloudWatch alarms"):
        pages = aws.client("cloudwatch").get_paginator("describe_alarms").paginate(AlarmTypes=["MetricAlarm"])
        alarms = [a for page in pages for a in page["MetricAlarms"]]
    for alarm in alarms:
        endpoint = _alarm_endpoint(alarm["AlarmName"])
        if endpoint and alarm.get("Namespace") == "AWS/SageMaker" and endpoint not in endpoints:
            orphans.append(Orphan(kind="alarm", name=alarm["AlarmName"], detail=f"endpoint {endpoint} is gone"))
    return orphans


def _alarm_endpoint(alarm: str) -> Optional[str]:
    return alarm[: -len(ALARM_SUFFIX)] if alarm.endswith(ALARM_SUFFIX) and len(alarm) > len(ALARM_SUFFIX) else None


def _endpoint_of(orphan: Orphan) -> str:
    if orphan.kind in ("scalable-target", "scaling-policy"):
        match = RESOURCE.match(orphan.name if orphan.kind == "scalable-target" else orphan.name.rsplit("/", 1)[0])
        return match.group(1) if match else ""
    if orphan.kind == "alarm":
        return _alarm_endpoint(orphan.name) or ""
    return orphan.name


def remove_orphan(aws: Aws, orphan: Orphan) -> None:
    """Remove one orphan; refused if an endpoint of its name has appeared since it was found."""
    endpoint = _endpoint_of(orphan)
    if endpoint and catalog._describe_raw(aws, endpoint) is not None:
        raise Refused(f"Endpoint '{endpoint}' exists again: its {orphan.kind} {orphan.name} is in use and was kept.")
    if orphan.kind == "endpoint-config":
        catalog._delete(aws, "endpoint config", orphan.name)
    elif orphan.kind == "model":
        catalog._delete(aws, "model", orphan.name)
    elif orphan.kind == "scalable-target":
        with translate(f"removing the scalable target {orphan.name}"):
            scaling.remove_target(aws, orphan.name)
    elif orphan.kind == "scaling-policy":
        rid, policy = orphan.name.rsplit("/", 1)
        with translate(f"removing the scaling policy {policy}"):
            scaling.tolerant(aws.client("application-autoscaling").delete_scaling_policy, PolicyName=policy,
                             ServiceNamespace=scaling.NAMESPACE, ResourceId=rid, ScalableDimension=scaling.DIMENSION)
    elif orphan.kind == "alarm":
        with translate(f"deleting the alarm {orphan.name}"):
            aws.client("cloudwatch").delete_alarms(AlarmNames=[orphan.name])
    else:
        raise Refused(f"Cannot remove a {orphan.kind} ({orphan.name}): this tool does not know that kind.")
