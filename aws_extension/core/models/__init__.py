"""Model files: types, transfers to S3, sources (paths, URLs, browser), and the cloud catalog."""
