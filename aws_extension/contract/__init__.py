"""The request contract that the inference client and the server share: the request's fields and checks, the
infotext, the prompt's network tags. Torch-free, so the client imports it without the server."""
