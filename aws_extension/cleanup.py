"""`cleanup`: find what this tool created that nothing uses any more, and remove it."""

from __future__ import annotations

from typing import Callable, List

from .aws import Aws, iso, translate
from .compat import BaseModel


class Orphan(BaseModel):
    """Something billable or cluttering that belongs to no live model upload or endpoint."""

    kind: str  # endpoint-config | model | scalable-target | scaling-policy | alarm | multipart-upload
    name: str
    detail: str = ""
    ref: str = ""  # what removing it needs besides the name (a multipart upload's id)


def open_uploads(aws: Aws) -> List[Orphan]:
    """Multipart uploads left open in the bucket (interrupted uploads keep paying for their parts)."""
    found = []
    with translate(f"listing open uploads in {aws.s3_uri()}"):
        for page in aws.client("s3").get_paginator("list_multipart_uploads").paginate(Bucket=aws.bucket):
            for upload in page.get("Uploads", []):
                started = iso(upload["Initiated"])
                found.append(Orphan(kind="multipart-upload", name=upload["Key"], ref=upload["UploadId"],
                                    detail=f"unfinished upload started {started}"))
    return found


def abort_upload(aws: Aws, orphan: Orphan) -> None:
    with translate(f"aborting the open upload of {orphan.name}"):
        aws.client("s3").abort_multipart_upload(Bucket=aws.bucket, Key=orphan.name, UploadId=orphan.ref)


def find_orphans(aws: Aws) -> List[Orphan]:
    from .endpoints.cleanup import find_orphans as endpoint_orphans

    return endpoint_orphans(aws) + open_uploads(aws)


def remove_orphans(aws: Aws, orphans: List[Orphan], on_removed: Callable[[Orphan], None] = lambda o: None) -> None:
    from .endpoints.cleanup import remove_orphan as remove_endpoint_orphan

    for orphan in orphans:
        if orphan.kind == "multipart-upload":
            abort_upload(aws, orphan)
        else:
            remove_endpoint_orphan(aws, orphan)
        on_removed(orphan)
