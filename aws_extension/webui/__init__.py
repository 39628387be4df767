"""The WebUI glue: the tab and settings registered with A1111/Forge (glue.py), the txt2img/img2img script
(script.py). The only code that imports the WebUI's `modules`, and only when the WebUI loads it."""
