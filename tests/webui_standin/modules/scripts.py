"""Stand-in: the script base class the WebUI looks for in every module it loads from scripts/.

Names and defaults as in WebUI 1.10's modules/scripts.py; the ScriptRunner that drives scripts is left out: the
tests call title(), show(), ui() and run() as it does.
"""

import re

AlwaysVisible = object()


class Script:
    name = None
    section = None
    filename = None
    args_from = None
    args_to = None
    alwayson = False
    is_txt2img = False
    is_img2img = False
    tabname = None
    group = None
    create_group = True
    infotext_fields = None  # [(component, "Infotext key" or callable(params) -> value or gr.update)], set in ui()
    paste_field_names = None
    api_info = None
    setup_for_ui_only = False
    controls = None
    sorting_priority = 0

    def title(self):
        raise NotImplementedError

    def ui(self, is_img2img):
        pass

    def show(self, is_img2img):
        """True: in the "Script" dropdown; AlwaysVisible: always shown; False: hidden."""
        return True

    def run(self, p, *args):
        """The chosen dropdown script's run(p, *its ui values); a Processed returned replaces local generation."""
        pass

    def setup(self, p, *args):
        pass

    def before_process(self, p, *args):
        pass

    def process(self, p, *args):
        pass

    def postprocess(self, p, processed, *args):
        pass

    def elem_id(self, item_id):
        """An element id unique to this script and tab, as the WebUI builds it."""
        need_tabname = self.show(True) == self.show(False)
        tabkind = "img2img" if self.is_img2img else "txt2img"
        tabname = f"{tabkind}_" if need_tabname else ""
        title = re.sub(r"[^a-z_0-9]", "", re.sub(r"\s", "_", self.title().lower()))
        return f"script_{tabname}{title}_{item_id}"
