"""Leftovers in the bucket: multipart uploads never finished, code packages no SageMaker model uses."""

from __future__ import annotations

from typing import List

from ..aws import Aws, error_code, is_not_found, iso, translate
from .orphan import Orphan


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
    from ..endpoints.code_package import KEY_PREFIX

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
