"""Amazon SageMaker for Stable Diffusion WebUI: the core, plain Python over boto3."""

__version__ = "0.1.0"
