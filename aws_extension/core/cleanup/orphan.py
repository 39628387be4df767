"""What cleanup finds: one leftover, whichever part of the tool left it."""

from __future__ import annotations

from ..compat import BaseModel


class Orphan(BaseModel):
    """Something billable or cluttering that belongs to no live model upload or endpoint."""

    kind: str  # endpoint-config | model | scalable-target | scaling-policy | alarm | multipart-upload | code-package
    name: str
    detail: str = ""
    ref: str = ""  # what removing it needs besides the name (a multipart upload's id)
