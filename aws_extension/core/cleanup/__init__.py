"""`cleanup`: find what this tool created that nothing uses any more, and remove it."""

from __future__ import annotations

from typing import Callable, List

from ..aws import Aws, translate
from .endpoints import find_orphans as endpoint_orphans
from .endpoints import remove_orphan as remove_endpoint_orphan
from .orphan import Orphan
from .storage import abort_upload, open_uploads, unused_code_packages


def find_orphans(aws: Aws) -> List[Orphan]:
    return endpoint_orphans(aws) + open_uploads(aws) + unused_code_packages(aws)


def remove_orphans(aws: Aws, orphans: List[Orphan], on_removed: Callable[[Orphan], None] = lambda o: None) -> None:
    for orphan in orphans:
        if orphan.kind == "multipart-upload":
            abort_upload(aws, orphan)
        elif orphan.kind == "code-package":
            with translate(f"removing {aws.s3_uri(orphan.name)}"):
                aws.client("s3").delete_object(Bucket=aws.bucket, Key=orphan.name)
        else:
            remove_endpoint_orphan(aws, orphan)
        on_removed(orphan)
