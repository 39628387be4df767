"""What exists in the emulator's SageMaker, autoscaling and CloudWatch: the pieces an endpoint is made of."""

from __future__ import annotations


def cloud_inventory(client) -> dict:
    """`client(service)` gives a boto3 client; returns the sorted names of every endpoint piece."""
    sm, aas, cw = client("sagemaker"), client("application-autoscaling"), client("cloudwatch")
    return {
        "endpoints": sorted(e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]),
        "configs": sorted(c["EndpointConfigName"] for c in sm.list_endpoint_configs()["EndpointConfigs"]),
        "models": sorted(m["ModelName"] for m in sm.list_models()["Models"]),
        "targets": sorted(t["ResourceId"] for t in aas.describe_scalable_targets(ServiceNamespace="sagemaker")[
            "ScalableTargets"]),
        "policies": sorted(p["PolicyName"] for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")[
            "ScalingPolicies"]),
        "alarms": sorted(a["AlarmName"] for a in cw.describe_alarms()["MetricAlarms"]),
    }


NOTHING = {"endpoints": [], "configs": [], "models": [], "targets": [], "policies": [], "alarms": []}
