"""Run by the WebUI on every launch: install only what it lacks, never touching its own pins."""

import launch

for module, requirement in (("boto3", "boto3>=1.36"),):
    if not launch.is_installed(module):
        launch.run_pip(f"install {requirement}", f"sd-webui-sagemaker requirement: {requirement}")
