"""The WebUI imports this file by path, with the extension root first on sys.path; the rest lives in aws_extension."""

from aws_extension.webui import glue
# the WebUI's script loader takes every Script subclass it finds here: "Amazon SageMaker" in txt2img and img2img
from aws_extension.webui.script import SageMakerScript  # noqa: F401

glue.register()
