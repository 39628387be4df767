"""Autoscaling of our endpoints: the wanted scaling lives in the endpoint's tags, AWS holds the actual one.

AWS refuses to register a scalable target for an endpoint that is not InService, so `reconcile` runs
whenever we see an endpoint settle (deploy's watcher, `--wait`, every listing) and makes the actual
state match the tags. It only writes what differs, so running it again is free.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, List, Optional

from ..aws import Aws, error_code, is_not_found, translate
from ..compat import BaseModel
from ..config import TAG_PREFIX
from ..errors import NotFound, UserError

log = logging.getLogger(__name__)

TAG_MANAGED = f"{TAG_PREFIX}:managed"
TAG_TYPE = f"{TAG_PREFIX}:type"
TAG_SCALING = f"{TAG_PREFIX}:scaling"

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
VARIANT = "AllTraffic"

BACKLOG_PER_INSTANCE = 2.0  # queued requests per instance before adding one
INVOCATIONS_PER_INSTANCE = 5.0  # per minute; one image takes several seconds
SCALE_IN_COOLDOWN = 600  # longer than a cold start (5-10 min), or it flaps
SCALE_OUT_COOLDOWN = 60
STEP_COOLDOWN = 300  # the alarm repeats while the first instance boots: each repeat only sets 1 again
FROM_ZERO = 1  # instances the alarm sets when the backlog has no capacity; target tracking adds the rest


class Scaling(BaseModel):
    """The scaling a user asked for at deploy time."""

    enabled: bool = True
    min: int = 0
    max: int = 1

    def to_tag(self) -> str:
        # SageMaker tag values allow only letters, digits, spaces and _.:/=+-@ (no JSON braces or quotes)
        return f"enabled={'true' if self.enabled else 'false'} min={self.min} max={self.max}"

    @classmethod
    def from_tag(cls, value: Optional[str]) -> Optional["Scaling"]:
        if not value:
            return None
        fields = dict(re.findall(r'"?(\w+)"?\s*[=:]\s*"?(\w+)"?', value))  # also reads JSON written by hand
        try:
            return cls(enabled=fields.get("enabled", "true").lower() == "true",
                       min=int(fields.get("min", 0)), max=int(fields.get("max", 1)))
        except ValueError:
            return None

    def bounds(self, endpoint_type: str) -> tuple:
        low = max(self.min, 1) if endpoint_type == "real-time" else max(self.min, 0)
        return low, max(self.max, low, 1)


def resource_id(name: str) -> str:
    return f"endpoint/{name}/variant/{VARIANT}"


def backlog_policy(name: str) -> str:
    return f"{name}-backlog"


def step_policy(name: str) -> str:
    return f"{name}-scale-from-zero"


def invocations_policy(name: str) -> str:
    return f"{name}-invocations"


def alarm_name(name: str) -> str:
    return f"{name}-has-backlog-without-capacity"


def our_policy_names(name: str) -> set:
    return {backlog_policy(name), step_policy(name), invocations_policy(name)}


def missing(exc: BaseException) -> bool:
    """Not-found in any of the APIs we use (autoscaling says it with ValidationException or ObjectNotFound)."""
    if is_not_found(exc) or error_code(exc) in ("ObjectNotFoundException",):
        return True
    return error_code(exc) == "ValidationException" and "found" in str(exc).lower()


def tags_of(aws: Aws, arn: str) -> Dict[str, str]:
    with translate(f"reading the tags of {arn.split(':')[-1]}"):
        pages = aws.client("sagemaker").get_paginator("list_tags").paginate(ResourceArn=arn)
        return {t["Key"]: t["Value"] for page in pages for t in page.get("Tags", [])}


def is_ours(tags: Dict[str, str]) -> bool:
    return tags.get(TAG_MANAGED) == "true"


def endpoint_tags(name: str, endpoint_type: str, scaling: Scaling) -> List[dict]:
    return [{"Key": TAG_MANAGED, "Value": "true"}, {"Key": TAG_TYPE, "Value": endpoint_type},
            {"Key": TAG_SCALING, "Value": scaling.to_tag()}]


def our_endpoints(aws: Aws, name: Optional[str] = None) -> List[dict]:
    """Endpoints tagged ours as {name, status, arn, tags}; with a name, that one (NotFound if missing)."""
    sm = aws.client("sagemaker")
    if name:
        try:
            found = [sm.describe_endpoint(EndpointName=name)]
        except Exception as exc:
            if missing(exc):
                raise NotFound(f"Endpoint '{name}' does not exist.") from None
            with translate(f"reading endpoint {name}"):
                raise
    else:
        with translate("listing endpoints"):
            found = [e for page in sm.get_paginator("list_endpoints").paginate() for e in page["Endpoints"]]
    items = []
    for summary in found:
        tags = tags_of(aws, summary["EndpointArn"])
        if is_ours(tags):
            items.append({"name": summary["EndpointName"], "status": summary["EndpointStatus"],
                          "arn": summary["EndpointArn"], "tags": tags})
    return items


def wanted_policies(name: str, endpoint_type: str) -> Dict[str, dict]:
    """put_scaling_policy arguments, by policy name."""
    if endpoint_type == "real-time":
        return {invocations_policy(name): {"PolicyType": "TargetTrackingScaling", "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": INVOCATIONS_PER_INSTANCE,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleInCooldown": SCALE_IN_COOLDOWN, "ScaleOutCooldown": SCALE_OUT_COOLDOWN}}}
    return {
        backlog_policy(name): {"PolicyType": "TargetTrackingScaling", "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": BACKLOG_PER_INSTANCE,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
                "Dimensions": [{"Name": "EndpointName", "Value": name}], "Statistic": "Average"},
            "ScaleInCooldown": SCALE_IN_COOLDOWN, "ScaleOutCooldown": SCALE_OUT_COOLDOWN}},
        # target tracking alone never leaves zero: at 0 instances the backlog per instance is undefined.
        # ExactCapacity, not ChangeInCapacity +1: a cold start (10-15 min) outlasts any cooldown, and a +1 repeated
        # by the still-firing alarm would add a second instance before the first is up. It only fires at 0 instances.
        step_policy(name): {"PolicyType": "StepScaling", "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ExactCapacity", "MetricAggregationType": "Average", "Cooldown": STEP_COOLDOWN,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": FROM_ZERO}]}},
    }


def wanted_alarm(name: str, step_arn: str) -> dict:
    return {"AlarmName": alarm_name(name), "MetricName": "HasBacklogWithoutCapacity", "Namespace": "AWS/SageMaker",
            "Statistic": "Average", "Dimensions": [{"Name": "EndpointName", "Value": name}], "Period": 60,
            "EvaluationPeriods": 1, "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "notBreaching", "AlarmActions": [step_arn]}


def _contains(actual, wanted) -> bool:
    """True when everything in `wanted` is in `actual` (AWS adds fields of its own to what it returns)."""
    if isinstance(wanted, dict):
        return isinstance(actual, dict) and all(_contains(actual.get(k), v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(actual, list) and len(actual) == len(wanted) and all(map(_contains, actual, wanted))
    if isinstance(wanted, (int, float)) and not isinstance(wanted, bool):
        return isinstance(actual, (int, float)) and float(actual) == float(wanted)
    return actual == wanted


def _target(aws: Aws, rid: str) -> Optional[dict]:
    found = aws.client("application-autoscaling").describe_scalable_targets(
        ServiceNamespace=NAMESPACE, ResourceIds=[rid], ScalableDimension=DIMENSION)["ScalableTargets"]
    return found[0] if found else None


def _policies(aws: Aws, rid: str) -> Dict[str, dict]:
    pages = aws.client("application-autoscaling").get_paginator("describe_scaling_policies").paginate(
        ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION)
    return {p["PolicyName"]: p for page in pages for p in page["ScalingPolicies"]}


def _alarm(aws: Aws, name: str) -> Optional[dict]:
    found = aws.client("cloudwatch").describe_alarms(AlarmNames=[alarm_name(name)])["MetricAlarms"]
    return found[0] if found else None


def apply(aws: Aws, name: str, endpoint_type: str, wish: Scaling) -> bool:
    """Make the actual scaling of an InService endpoint match `wish`; True if anything was written."""
    if not wish.enabled:
        return remove_scaling(aws, name)
    aas = aws.client("application-autoscaling")
    rid = resource_id(name)
    changed = False
    with translate(f"applying autoscaling to endpoint {name}"):
        low, high = wish.bounds(endpoint_type)
        target = _target(aws, rid)
        if target is None or (target["MinCapacity"], target["MaxCapacity"]) != (low, high):
            aas.register_scalable_target(ServiceNamespace=NAMESPACE, ResourceId=rid, ScalableDimension=DIMENSION,
                                         MinCapacity=low, MaxCapacity=high)
            changed = True
        existing = _policies(aws, rid)
        arns = {}
        for policy, spec in wanted_policies(name, endpoint_type).items():
            have = existing.get(policy)
            if have and all(_contains(have.get(k), v) for k, v in spec.items()):
                arns[policy] = have["PolicyARN"]
                continue
            arns[policy] = aas.put_scaling_policy(PolicyName=policy, ServiceNamespace=NAMESPACE, ResourceId=rid,
                                                  ScalableDimension=DIMENSION, **spec)["PolicyARN"]
            changed = True
        for policy in (our_policy_names(name) & set(existing)) - set(arns):
            aas.delete_scaling_policy(PolicyName=policy, ServiceNamespace=NAMESPACE, ResourceId=rid,
                                      ScalableDimension=DIMENSION)
            changed = True
        if endpoint_type != "real-time":
            alarm = wanted_alarm(name, arns[step_policy(name)])
            if not _contains(_alarm(aws, name), alarm):
                aws.client("cloudwatch").put_metric_alarm(**alarm, Tags=[{"Key": TAG_MANAGED, "Value": "true"}])
                changed = True
    return changed


def remove_scaling(aws: Aws, name: str) -> bool:
    """Alarm, policies, target of one endpoint; any of them may already be gone. True if any existed."""
    existed = False
    with translate(f"removing the autoscaling of endpoint {name}"):
        if _alarm(aws, name):
            aws.client("cloudwatch").delete_alarms(AlarmNames=[alarm_name(name)])
            existed = True
        existed |= remove_target(aws, resource_id(name))
    return existed


def remove_target(aws: Aws, rid: str) -> bool:
    """Policies then the scalable target of one resource id; True if any existed."""
    aas = aws.client("application-autoscaling")
    existed = False
    # AWS deletes the policies with the target; moto does not: delete them ourselves either way
    for policy in _policies(aws, rid):
        existed |= tolerant(aas.delete_scaling_policy, PolicyName=policy, ServiceNamespace=NAMESPACE,
                            ResourceId=rid, ScalableDimension=DIMENSION)
    existed |= tolerant(aas.deregister_scalable_target, ServiceNamespace=NAMESPACE, ResourceId=rid,
                        ScalableDimension=DIMENSION)
    return existed


def tolerant(call, **kwargs) -> bool:
    """Run a delete call; False if the thing was already gone."""
    try:
        call(**kwargs)
        return True
    except Exception as exc:
        if missing(exc):
            return False
        raise


def reconcile_endpoints(aws: Aws, items: List[dict]) -> List[str]:
    changed, errors = [], []
    for item in items:
        if item["status"] != "InService":
            continue  # AWS refuses autoscaling before InService; a later trigger applies it
        wish = Scaling.from_tag(item["tags"].get(TAG_SCALING))
        if wish is None:
            log.warning("Endpoint %s has no readable %s tag; its scaling is left alone.", item["name"], TAG_SCALING)
            continue
        try:
            if apply(aws, item["name"], item["tags"].get(TAG_TYPE, "async"), wish):
                changed.append(item["name"])
        except UserError as exc:  # one endpoint's failure must not stop the others
            errors.append(exc)
    if errors:
        raise errors[0]
    return changed


def reconcile(aws: Aws, name: Optional[str] = None) -> List[str]:
    """Apply the tagged scaling to every InService endpoint of ours (or the one named); names it changed."""
    return reconcile_endpoints(aws, our_endpoints(aws, name))


def scaling_state(aws: Aws) -> Dict[str, dict]:
    """All SageMaker scalable targets with their policies, by resource id: two listings for any number."""
    aas = aws.client("application-autoscaling")
    state: Dict[str, dict] = {}
    with translate("listing autoscaling targets"):
        for page in aas.get_paginator("describe_scalable_targets").paginate(ServiceNamespace=NAMESPACE):
            for t in page["ScalableTargets"]:
                state[t["ResourceId"]] = {"min": t["MinCapacity"], "max": t["MaxCapacity"], "policies": {}}
        for page in aas.get_paginator("describe_scaling_policies").paginate(ServiceNamespace=NAMESPACE):
            for p in page["ScalingPolicies"]:
                state.setdefault(p["ResourceId"], {"min": None, "max": None, "policies": {}})["policies"][
                    p["PolicyName"]] = p
    return state


def is_applied(state: Dict[str, dict], name: str, endpoint_type: str, wish: Optional[Scaling]) -> bool:
    """Whether the actual target and policies match the wish (no target at all when autoscaling is off)."""
    entry = state.get(resource_id(name))
    if wish is None or not wish.enabled:
        return entry is None or entry["min"] is None
    if entry is None or (entry["min"], entry["max"]) != wish.bounds(endpoint_type):
        return False
    have = entry["policies"]  # by content too: a policy of an older version of this tool is not applied
    return all(policy in have and all(_contains(have[policy].get(k), v) for k, v in spec.items())
               for policy, spec in wanted_policies(name, endpoint_type).items())
