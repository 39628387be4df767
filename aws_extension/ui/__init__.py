"""The Amazon SageMaker tab: gradio blocks that only wire widgets to core calls (the one place gradio is imported)."""
