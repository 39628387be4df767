"""SageMaker inference endpoints: deploy, list, describe, delete, autoscaling, cleanup of leftovers."""

from .catalog import EndpointRecord, delete_endpoint, describe, list_endpoints
from .deploy import EndpointSpec, deploy, wait_until_settled
from .scaling import reconcile

__all__ = ["EndpointRecord", "EndpointSpec", "delete_endpoint", "deploy", "describe", "list_endpoints", "reconcile",
           "wait_until_settled"]
