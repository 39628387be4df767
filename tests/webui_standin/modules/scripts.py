"""Stand-in: the script base class the WebUI looks for in every module it loads from scripts/."""

AlwaysVisible = object()


class Script:
    def title(self):
        raise NotImplementedError
