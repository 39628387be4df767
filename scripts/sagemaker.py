"""The WebUI imports this file by path, with the extension root first on sys.path; the rest lives in aws_extension."""

from aws_extension import webui

webui.register()
