"""Amazon SageMaker for Stable Diffusion WebUI.

core/      plain Python over boto3: settings, models in S3, endpoints, datasets, the inference client, cleanup
contract/  what the client and the inference server share: the request, the infotext, prompt tags (torch-free)
cli/, ui/, webui/  the surfaces: `python -m aws_extension`, the tab (gradio), the WebUI's glue and script
serve/     the inference server the endpoints run (torch, diffusers)
local/     the offline emulator: moto, and local endpoints that run serve/ as processes
"""

__version__ = "0.1.0"
