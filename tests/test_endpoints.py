"""Endpoints against the emulator: deploy, refusals, autoscaling only once InService, delete, cleanup."""

from __future__ import annotations

import re
import sys
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from inventory import NOTHING, cloud_inventory
from aws_extension.core import endpoints
from aws_extension.core.bootstrap import ensure_role
from aws_extension.core.cleanup import remove_orphans
from aws_extension.core.endpoints import EndpointSpec, scaling
from aws_extension.core.cleanup.endpoints import find_orphans
from aws_extension.core.errors import ConfigError, NotFound, Refused, UserError
from aws_extension.local import emulator as emulator_module

# the package re-exports the function `deploy`, which hides the module of that name
deploy_module = sys.modules["aws_extension.core.endpoints.deploy"]

DIM = "sagemaker:variant:DesiredInstanceCount"
# SageMaker's documented tag pattern; moto does not check it, AWS does
AWS_TAG_VALUE = re.compile(r"^[\w\s.:/=+\-@]*$")


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(deploy_module, "POLL_SECONDS", 0.05)
    yield
    for thread in deploy_module.watchers():  # no watcher may outlive its test and touch the next one's endpoints
        thread.join(timeout=15)


@pytest.fixture
def raw(aws_env):
    """Plain boto3 clients, as someone poking at the account by hand."""
    cfg = Config(retries={"max_attempts": 1})
    return lambda service: boto3.client(service, region_name=aws_env["AWS_REGION"], config=cfg)


def inventory(raw) -> dict:
    return cloud_inventory(raw)


EMPTY = NOTHING


def tags(raw, arn: str) -> dict:
    return {t["Key"]: t["Value"] for t in raw("sagemaker").list_tags(ResourceArn=arn)["Tags"]}


def wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def wait_in_service(raw, name: str) -> None:
    wait_for(lambda: raw("sagemaker").describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService")


def deployed(aws, raw, **spec) -> str:
    """An endpoint deployed and InService, its scaling not applied yet (no watcher, no listing)."""
    name = endpoints.deploy(aws, EndpointSpec(**spec), background=False).name
    wait_in_service(raw, name)
    return name


def test_deploy_with_defaults(aws, raw):
    record = endpoints.deploy(aws, EndpointSpec(), background=False)
    assert re.fullmatch(r"esd-async-[a-z0-9]{5}", record.name)
    assert (record.type, record.status, record.instance_type) == ("async", "Creating", "ml.g5.2xlarge")
    assert (record.autoscaling, record.min_instances, record.max_instances) == (True, 0, 1)
    assert record.label.startswith(f"{record.name} (Creating, 20")

    sm = raw("sagemaker")
    config = sm.describe_endpoint_config(EndpointConfigName=record.name)
    [variant] = config["ProductionVariants"]
    assert (variant["InstanceType"], variant["InitialInstanceCount"], variant["ModelName"]) == \
        ("ml.g5.2xlarge", 1, record.name)
    assert config["AsyncInferenceConfig"]["OutputConfig"] == {
        "S3OutputPath": f"s3://{aws.bucket}/inference/output/", "S3FailurePath": f"s3://{aws.bucket}/inference/failure/"}
    assert config["AsyncInferenceConfig"]["ClientConfig"] == {"MaxConcurrentInvocationsPerInstance": 1}
    model = sm.describe_model(ModelName=record.name)
    assert model["PrimaryContainer"]["Image"] == emulator_module.LOCAL_IMAGE
    # what the server runs on, so that it can tell an unusable GPU from a CPU type; no checkpoint to preload
    assert model["PrimaryContainer"]["Environment"] == {
        "SD_SAGEMAKER_BUCKET": aws.bucket, "AWS_DEFAULT_REGION": emulator_module.REGION, "HF_HUB_OFFLINE": "1",
        "SD_SAGEMAKER_ENDPOINT_TYPE": "async", "SD_SAGEMAKER_INSTANCE_TYPE": "ml.g5.2xlarge"}
    assert model["ExecutionRoleArn"] == emulator_module.ROLE_ARN

    endpoint = sm.describe_endpoint(EndpointName=record.name)
    for arn in (endpoint["EndpointArn"], config["EndpointConfigArn"], model["ModelArn"]):
        found = tags(raw, arn)
        assert found["sd-webui-sagemaker:managed"] == "true"
        assert found["sd-webui-sagemaker:type"] == "async"
        assert scaling.Scaling.from_tag(found["sd-webui-sagemaker:scaling"]) == scaling.Scaling(min=0, max=1)
        assert all(AWS_TAG_VALUE.match(v) for v in found.values()), found  # AWS would reject the deploy


def test_deploy_real_time_with_custom_name_and_bounds(aws, raw):
    spec = EndpointSpec(name="my-sd", endpoint_type="real-time", instance_type="ml.g5.xlarge",
                        min_instances=2, max_instances=4)
    record = endpoints.deploy(aws, spec, background=False)
    assert (record.name, record.type, record.min_instances, record.max_instances) == ("my-sd", "real-time", 2, 4)
    config = raw("sagemaker").describe_endpoint_config(EndpointConfigName="my-sd")
    assert "AsyncInferenceConfig" not in config
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g5.xlarge"

    wait_in_service(raw, "my-sd")
    assert endpoints.reconcile(aws) == ["my-sd"]
    [target] = raw("application-autoscaling").describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    assert (target["ResourceId"], target["MinCapacity"], target["MaxCapacity"]) == ("endpoint/my-sd/variant/AllTraffic", 2, 4)
    [policy] = raw("application-autoscaling").describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]
    assert policy["PolicyName"] == "my-sd-invocations"
    assert policy["TargetTrackingScalingPolicyConfiguration"]["PredefinedMetricSpecification"] == {
        "PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}
    assert inventory(raw)["alarms"] == []  # no scale-from-zero for real-time


@pytest.mark.parametrize("spec, words", [
    (dict(name="my_endpoint"), ["my_endpoint", "letters, digits and hyphens"]),
    (dict(name="-leading"), ["-leading", "starts and ends"]),
    (dict(name="a" * 64), ["63"]),
    (dict(min_instances=3, max_instances=2), ["min instances (3) exceed max instances (2)"]),
    (dict(max_instances=0), ["at least 1"]),
    (dict(endpoint_type="real-time", min_instances=0), ["real-time", "scale to zero"]),
    (dict(endpoint_type="batch"), ["batch", "async or real-time"]),
    (dict(instance_type="g5.2xlarge"), ["g5.2xlarge", "ml."]),
    (dict(max_instances="many"), ["max_instances"]),
])
def test_invalid_spec_is_refused_before_anything_is_created(aws, raw, spec, words):
    with pytest.raises(Refused) as err:
        endpoints.deploy(aws, EndpointSpec(**spec))
    assert all(w in str(err.value) for w in words), str(err.value)
    assert inventory(raw) == EMPTY


def test_duplicate_name_is_refused_and_the_existing_endpoint_is_untouched(aws, raw):
    endpoints.deploy(aws, EndpointSpec(name="dup"), background=False)
    before = inventory(raw)
    with pytest.raises(Refused, match="'dup' already exists"):
        endpoints.deploy(aws, EndpointSpec(name="dup", instance_type="ml.g5.12xlarge"), background=False)
    assert inventory(raw) == before
    # moto would have overwritten the config: prove we never called it
    config = raw("sagemaker").describe_endpoint_config(EndpointConfigName="dup")
    assert config["ProductionVariants"][0]["InstanceType"] == "ml.g5.2xlarge"


def test_leftover_model_of_the_same_name_is_refused(aws, raw):
    raw("sagemaker").create_model(ModelName="taken", PrimaryContainer={"Image": "x"},
                                  ExecutionRoleArn=emulator_module.ROLE_ARN)
    with pytest.raises(Refused, match="model named 'taken'.*cleanup"):
        endpoints.deploy(aws, EndpointSpec(name="taken"), background=False)
    assert inventory(raw) == dict(EMPTY, models=["taken"])


def test_no_role_no_image(aws, raw, monkeypatch):
    monkeypatch.setattr(aws.settings, "role_arn", None)
    with pytest.raises(ConfigError, match="setup --create-role"):
        endpoints.deploy(aws, EndpointSpec(name="ep"))
    assert inventory(raw) == EMPTY
    monkeypatch.setattr(aws.settings, "image_uri", None)
    role, _ = ensure_role(aws)  # `setup --create-role` made it: found without being named

    endpoints.deploy(aws, EndpointSpec(name="ep", image_uri="123.dkr.ecr/sd:1"), background=False)
    model = raw("sagemaker").describe_model(ModelName="ep")
    assert (model["ExecutionRoleArn"], model["PrimaryContainer"]["Image"]) == (role, "123.dkr.ecr/sd:1")
    # no image at all: AWS's prebuilt PyTorch image with our server as its code (tests/test_deploy_container.py)
    endpoints.deploy(aws, EndpointSpec(name="ep2"), background=False)
    model = raw("sagemaker").describe_model(ModelName="ep2")
    assert model["PrimaryContainer"]["Image"].startswith("763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-inference:")
    assert model["PrimaryContainer"]["ModelDataUrl"].startswith(f"s3://{aws.bucket}/code/")


def autoscaling_of(raw) -> tuple:
    aas = raw("application-autoscaling")
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker")["ScalableTargets"]
    policies = {p["PolicyName"]: p for p in aas.describe_scaling_policies(ServiceNamespace="sagemaker")["ScalingPolicies"]}
    alarms = {a["AlarmName"]: a for a in raw("cloudwatch").describe_alarms()["MetricAlarms"]}
    return targets, policies, alarms


def assert_async_scaling(raw, name: str, low: int = 0, high: int = 1) -> None:
    targets, policies, alarms = autoscaling_of(raw)
    assert [(t["ResourceId"], t["ScalableDimension"], t["MinCapacity"], t["MaxCapacity"]) for t in targets] == \
        [(f"endpoint/{name}/variant/AllTraffic", DIM, low, high)]
    backlog = policies[f"{name}-backlog"]["TargetTrackingScalingPolicyConfiguration"]
    assert backlog["CustomizedMetricSpecification"] == {
        "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
        "Dimensions": [{"Name": "EndpointName", "Value": name}], "Statistic": "Average"}
    assert backlog["ScaleInCooldown"] > 300 and backlog["ScaleOutCooldown"] <= 60  # no flapping around cold starts
    step = policies[f"{name}-scale-from-zero"]
    # leaves zero with exactly one instance however often the alarm repeats; target tracking adds the rest
    assert step["StepScalingPolicyConfiguration"]["AdjustmentType"] == "ExactCapacity"
    assert step["StepScalingPolicyConfiguration"]["StepAdjustments"] == [
        {"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]
    alarm = alarms[f"{name}-has-backlog-without-capacity"]
    assert (alarm["MetricName"], alarm["Namespace"], alarm["Dimensions"]) == \
        ("HasBacklogWithoutCapacity", "AWS/SageMaker", [{"Name": "EndpointName", "Value": name}])
    assert (alarm["Threshold"], alarm["ComparisonOperator"], alarm["Period"], alarm["EvaluationPeriods"]) == \
        (1.0, "GreaterThanOrEqualToThreshold", 60, 1)
    assert alarm["TreatMissingData"] == "notBreaching"
    assert alarm["AlarmActions"] == [step["PolicyARN"]]


def test_scaling_waits_for_in_service_then_the_watcher_applies_it(aws, raw, emulator):
    emulator.creating_seconds = 2.0
    record = endpoints.deploy(aws, EndpointSpec(max_instances=3))
    # still Creating: AWS would refuse a scalable target now; neither the watcher nor a reconcile may try
    assert endpoints.reconcile(aws) == []
    [listed] = endpoints.list_endpoints(aws)
    assert (listed.name, listed.status, listed.scaling_applied) == (record.name, "Creating", False)
    assert autoscaling_of(raw) == ([], {}, {})

    wait_for(lambda: autoscaling_of(raw)[2])  # the alarm is the last thing written
    assert_async_scaling(raw, record.name, 0, 3)
    [listed] = endpoints.list_endpoints(aws)
    assert (listed.status, listed.scaling_applied, listed.instance_count) == ("InService", True, 1)


def test_listing_applies_scaling_left_pending_by_a_restart(aws, raw):
    name = deployed(aws, raw)  # no watcher: as if the WebUI restarted while it was Creating
    assert autoscaling_of(raw)[0] == []
    assert endpoints.describe(aws, name).scaling_applied is False
    [record] = endpoints.list_endpoints(aws)
    assert (record.status, record.scaling_applied) == ("InService", True)
    assert_async_scaling(raw, name)


def test_reconcile_is_idempotent_and_repairs_drift(aws, raw, monkeypatch):
    name = deployed(aws, raw)
    assert endpoints.reconcile(aws) == [name]
    writes = []
    for service, methods in (("application-autoscaling", ("register_scalable_target", "put_scaling_policy",
                                                          "delete_scaling_policy", "deregister_scalable_target")),
                             ("cloudwatch", ("put_metric_alarm", "delete_alarms"))):
        client = aws.client(service)
        for method in methods:
            real = getattr(client, method)
            monkeypatch.setattr(client, method, lambda *a, _m=method, _r=real, **k: (writes.append(_m), _r(*a, **k))[1])
    assert endpoints.reconcile(aws) == []
    assert endpoints.reconcile(aws, name) == []
    endpoints.list_endpoints(aws)
    assert writes == []

    raw("application-autoscaling").register_scalable_target(  # someone widened it in the console
        ServiceNamespace="sagemaker", ResourceId=f"endpoint/{name}/variant/AllTraffic", ScalableDimension=DIM,
        MinCapacity=0, MaxCapacity=7)
    assert endpoints.reconcile(aws) == [name]
    assert writes == ["register_scalable_target"]
    assert_async_scaling(raw, name)


def test_reconcile_replaces_the_old_plus_one_step_policy(aws, raw):
    """Endpoints deployed by an older version leave zero with ChangeInCapacity +1 (a still-firing alarm added a second
    instance before the first was up, when max > 1): reconcile brings them to ExactCapacity 1."""
    name = deployed(aws, raw, max_instances=3)
    assert endpoints.reconcile(aws) == [name]
    aas = raw("application-autoscaling")
    rid = f"endpoint/{name}/variant/AllTraffic"
    old = aas.put_scaling_policy(
        PolicyName=f"{name}-scale-from-zero", ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
        PolicyType="StepScaling", StepScalingPolicyConfiguration={
            "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average", "Cooldown": 300,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]})["PolicyARN"]
    raw("cloudwatch").put_metric_alarm(**scaling.wanted_alarm(name, old))
    assert endpoints.describe(aws, name).scaling_applied is False  # the old policy does not count as applied
    assert endpoints.reconcile(aws) == [name]
    assert_async_scaling(raw, name, 0, 3)
    assert endpoints.describe(aws, name).scaling_applied is True
    assert endpoints.reconcile(aws) == []


def test_autoscaling_off_registers_nothing_and_removes_a_stale_target(aws, raw):
    name = deployed(aws, raw, autoscaling=False)
    assert endpoints.reconcile(aws) == []
    assert autoscaling_of(raw) == ([], {}, {})
    record = endpoints.describe(aws, name)
    assert (record.autoscaling, record.scaling_applied) == (False, True)

    raw("application-autoscaling").register_scalable_target(
        ServiceNamespace="sagemaker", ResourceId=f"endpoint/{name}/variant/AllTraffic", ScalableDimension=DIM,
        MinCapacity=0, MaxCapacity=2)
    assert endpoints.describe(aws, name).scaling_applied is False
    assert endpoints.reconcile(aws) == [name]
    assert autoscaling_of(raw) == ([], {}, {})


def test_wait_until_settled_reports_progress_and_applies_scaling(aws, raw):
    name = endpoints.deploy(aws, EndpointSpec(), background=False).name
    seen = []
    assert endpoints.wait_until_settled(aws, name, timeout=30, poll=0.05, on_status=seen.append) == "InService"
    assert seen == ["Creating", "InService"]
    assert_async_scaling(raw, name)
    with pytest.raises(NotFound, match="'nope'"):
        endpoints.wait_until_settled(aws, "nope", timeout=5, poll=0.05)


def test_failed_endpoint_shows_its_reason_and_gets_no_scaling(aws, raw, monkeypatch):
    monkeypatch.setitem(emulator_module._state, "readiness",
                        lambda name, age: ("Failed", "The container did not pass the ping health check.") if age > 0.3 else None)
    name = endpoints.deploy(aws, EndpointSpec(), background=False).name
    assert endpoints.wait_until_settled(aws, name, timeout=30, poll=0.05) == "Failed"
    [record] = endpoints.list_endpoints(aws)
    assert (record.status, record.failure_reason) == ("Failed", "The container did not pass the ping health check.")
    assert autoscaling_of(raw) == ([], {}, {})


def test_timeout_while_creating_is_one_sentence(aws, emulator):
    emulator.creating_seconds = 60
    name = endpoints.deploy(aws, EndpointSpec(), background=False).name
    with pytest.raises(UserError, match=f"'{name}' is still Creating"):
        endpoints.wait_until_settled(aws, name, timeout=0.3, poll=0.05)


@pytest.mark.parametrize("failing", ["create_endpoint", "create_endpoint_config"])
def test_deploy_failing_midway_leaves_nothing_behind(aws, raw, monkeypatch, failing):
    def refuse(**kwargs):
        raise ClientError({"Error": {"Code": "ResourceLimitExceeded",
                                     "Message": "account-level service limit for ml.g5.2xlarge is 0 Instances"}}, failing)

    monkeypatch.setattr(aws.client("sagemaker"), failing, refuse)
    with pytest.raises(UserError) as err:
        endpoints.deploy(aws, EndpointSpec(name="doomed"))
    message = str(err.value)
    assert message.startswith("Could not deploy endpoint 'doomed'") and "service limit" in message
    assert "\n" not in message
    assert inventory(raw) == EMPTY


def test_delete_leaves_nothing_billable(aws, raw):
    name = deployed(aws, raw)
    other = deployed(aws, raw, name="keep-me", endpoint_type="real-time")
    endpoints.list_endpoints(aws)  # scaling applied to both
    endpoints.delete_endpoint(aws, name)
    left = inventory(raw)
    assert left == dict(EMPTY, endpoints=[other], configs=[other], models=[other], policies=[f"{other}-invocations"],
                        targets=[f"endpoint/{other}/variant/AllTraffic"])
    endpoints.delete_endpoint(aws, other)
    assert inventory(raw) == EMPTY
    with pytest.raises(NotFound, match=f"'{name}' does not exist"):
        endpoints.delete_endpoint(aws, name)


def test_delete_finishes_what_a_partial_delete_left(aws, raw):
    name = deployed(aws, raw)
    endpoints.reconcile(aws)
    raw("sagemaker").delete_endpoint(EndpointName=name)  # deleted in the console: config, model, scaling remain
    endpoints.delete_endpoint(aws, name)
    assert inventory(raw) == EMPTY

    name = deployed(aws, raw)
    sm = raw("sagemaker")
    sm.delete_endpoint(EndpointName=name)
    sm.delete_endpoint_config(EndpointConfigName=name)
    endpoints.delete_endpoint(aws, name)  # only the model was left
    assert inventory(raw) == EMPTY


def test_foreign_endpoints_are_not_listed_scaled_or_deleted(aws, raw):
    sm = raw("sagemaker")
    sm.create_model(ModelName="theirs", PrimaryContainer={"Image": "x"}, ExecutionRoleArn=emulator_module.ROLE_ARN)
    sm.create_endpoint_config(EndpointConfigName="theirs", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "theirs", "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}])
    sm.create_endpoint(EndpointName="theirs", EndpointConfigName="theirs")
    wait_in_service(raw, "theirs")
    mine = deployed(aws, raw)
    assert [r.name for r in endpoints.list_endpoints(aws)] == [mine]
    assert [t["ResourceId"] for t in autoscaling_of(raw)[0]] == [f"endpoint/{mine}/variant/AllTraffic"]
    with pytest.raises(Refused, match="'theirs' was not deployed by this tool"):
        endpoints.delete_endpoint(aws, "theirs")
    assert "theirs" in inventory(raw)["endpoints"]


def test_list_is_newest_first_with_labels(aws, raw):
    first = endpoints.deploy(aws, EndpointSpec(name="first"), background=False)
    second = endpoints.deploy(aws, EndpointSpec(name="second", endpoint_type="real-time"), background=False)
    records = endpoints.list_endpoints(aws)
    assert [r.name for r in records] == [second.name, first.name]
    assert [r.type for r in records] == ["real-time", "async"]
    for record in records:
        assert re.fullmatch(rf"{record.name} \((Creating|InService), \d{{4}}-\d\d-\d\d \d\d:\d\d\)", record.label)


def test_cleanup_removes_orphans_and_keeps_live_endpoints(aws, raw):
    live = deployed(aws, raw)
    endpoints.reconcile(aws)
    live_pieces = inventory(raw)
    sm, aas, cw = raw("sagemaker"), raw("application-autoscaling"), raw("cloudwatch")
    ours = [{"Key": "sd-webui-sagemaker:managed", "Value": "true"}]
    # config + model of an endpoint deleted in the console
    sm.create_model(ModelName="gone-1", PrimaryContainer={"Image": "x"}, ExecutionRoleArn=emulator_module.ROLE_ARN,
                    Tags=ours)
    sm.create_endpoint_config(EndpointConfigName="gone-1", Tags=ours, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "gone-1", "InitialInstanceCount": 1, "InstanceType": "ml.g5.2xlarge"}])
    # someone else's model and config without an endpoint: not ours to remove
    sm.create_model(ModelName="their-model", PrimaryContainer={"Image": "x"}, ExecutionRoleArn=emulator_module.ROLE_ARN)
    sm.create_endpoint_config(EndpointConfigName="their-config", ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": "their-model", "InitialInstanceCount": 1,
        "InstanceType": "ml.m5.large"}])
    # scaling of an endpoint that is gone
    rid = "endpoint/gone-2/variant/AllTraffic"
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                 MinCapacity=0, MaxCapacity=2)
    arn = None
    for policy, spec in scaling.wanted_policies("gone-2", "async").items():
        arn = aas.put_scaling_policy(PolicyName=policy, ServiceNamespace="sagemaker", ResourceId=rid,
                                     ScalableDimension=DIM, **spec)["PolicyARN"]
    cw.put_metric_alarm(**scaling.wanted_alarm("gone-2", arn))

    found = {(o.kind, o.name) for o in find_orphans(aws)}
    assert found == {("endpoint-config", "gone-1"), ("model", "gone-1"), ("scalable-target", rid),
                     ("alarm", "gone-2-has-backlog-without-capacity")}
    remove_orphans(aws, find_orphans(aws))
    assert find_orphans(aws) == []
    after = inventory(raw)
    assert after == dict(live_pieces, configs=sorted(live_pieces["configs"] + ["their-config"]),
                         models=sorted(live_pieces["models"] + ["their-model"]))
    assert live in after["endpoints"]


def test_cleanup_finds_policies_whose_target_is_gone(aws, raw):
    aas = raw("application-autoscaling")
    rid = "endpoint/gone-3/variant/AllTraffic"
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                 MinCapacity=1, MaxCapacity=2)
    for policy, spec in scaling.wanted_policies("gone-3", "real-time").items():
        aas.put_scaling_policy(PolicyName=policy, ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                               **spec)
    aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM)
    orphans = find_orphans(aws)
    if not orphans:  # AWS (and a fixed moto) delete the policies with the target: nothing is left
        assert inventory(raw) == EMPTY
        return
    assert [(o.kind, o.name) for o in orphans] == [("scaling-policy", f"{rid}/gone-3-invocations")]
    remove_orphans(aws, orphans)
    assert inventory(raw) == EMPTY


def test_the_emulator_refuses_an_instance_type_aws_has_not(aws, raw):
    """As AWS does at CreateEndpointConfig (botocore's list of hosting types), and the deploy leaves nothing."""
    with pytest.raises(UserError, match="ml.nonexistent.huge"):
        endpoints.deploy(aws, EndpointSpec(name="huge", instance_type="ml.nonexistent.huge"), background=False)
    assert inventory(raw) == EMPTY
    endpoints.deploy(aws, EndpointSpec(name="real", instance_type="ml.g6e.xlarge"), background=False)  # a new type
