"""The core: plain Python over boto3 (settings and session, model storage and transfers, endpoints and scaling,
datasets, the inference client, cleanup). Nothing here imports gradio or the WebUI's `modules`."""
