"""Stand-in: the WebUI's shared state; the test replaces cmd_opts with its own parsed arguments."""

import argparse

from modules.options import OptionInfo, Options  # noqa: F401 - the WebUI re-exports OptionInfo here

cmd_opts = argparse.Namespace()
opts = Options()
