"""`cleanup`: find what this tool created that nothing uses any more, and remove it."""

from __future__ import annotations

from typing import Callable, List

from .aws import Aws, error_code, is_not_found, iso, translate
from .compat import BaseModel


class Orphan(BaseModel):
    """Something billable or cluttering that belongs to no live model upload or endpoint."""

    kind: str  # endpoint-config | model | scalable-target | scaling-policy | alarm | multipart-upload | code-package
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


def unused_code_packages(aws: Aws) -> List[Orphan]:
    """The server's code packages (code/ in the bucket, one per version deployed without an image) that no
    SageMaker model uses any more; a new deploy uploads its own again."""
    from .endpoints.code_package import KEY_PREFIX

    s3 = aws.client("s3")
    with translate(f"listing code packages in {aws.s3_uri(KEY_PREFIX)}"):
        packages = [o for page in s3.get_paginator("list_objects_v2").paginate(Bucket=aws.bucket, Prefix=KEY_PREFIX)
                    for o in page.get("Contents", [])]
    if not packages:
        return []
    sm = aws.client("sagemaker")
    with translate("listing SageMaker models"):
        names = [m["ModelName"] for page in sm.get_paginator("list_models").paginate() for m in page["Models"]]
    used = set()
    for name in names:
        try:
            used.add(sm.describe_model(ModelName=name).get("PrimaryContainer", {}).get("ModelDataUrl"))
        except Exception as exc:
            if not is_not_found(exc) and error_code(exc) != "ValidationException":  # deleted meanwhile
                with translate(f"reading SageMaker model {name}"):
                    raise
    return [Orphan(kind="code-package", name=o["Key"], detail=f"uploaded {iso(o['LastModified'])}, no model uses it")
            for o in packages if aws.s3_uri(o["Key"]) not in used]


def find_orphans(aws: Aws) -> List[Orphan]:
    from .endpoints.cleanup import find_orphans as endpoint_orphans

    return endpoint_orphans(aws) + open_uploads(aws) + unused_code_packages(aws)


def remove_orphans(aws: Aws, orphans: List[Orphan], on_removed: Callable[[Orphan], None] = lambda o: None) -> None:
    from .endpoints.cleanup import remove_orphan as remove_endpoint_orphan

    for orphan in orphans:
        if orphan.kind == "multipart-upload":
            abort_upload(aws, orphan)
        elif orphan.kind == "code-package":
            with translate(f"removing {aws.s3_uri(orphan.name)}"):
                aws.client("s3").delete_object(Bucket=aws.bucket, Key=orphan.name)
        else:
            remove_endpoint_orphan(aws, orphan)
        on_removed(orphan)
