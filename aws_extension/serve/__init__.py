"""The inference server package that SageMaker endpoints run (and that runs locally without a container)."""
