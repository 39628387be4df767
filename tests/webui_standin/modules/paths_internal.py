"""Stand-in: the test points these at a temporary folder."""

import os

data_path = os.path.abspath("webui-data")
models_path = os.path.join(data_path, "models")
