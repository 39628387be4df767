"""pydantic v1 API on either major version: the WebUI pins 1.10, Forge ships 2.x."""

try:  # pydantic 2 (and 1.10.17+) expose the v1 API here
    from pydantic.v1 import BaseModel, Field, ValidationError, validator
except ImportError:  # pragma: no cover - older pydantic 1.x
    from pydantic import BaseModel, Field, ValidationError, validator  # type: ignore[no-redef]

__all__ = ["BaseModel", "Field", "ValidationError", "validator"]
