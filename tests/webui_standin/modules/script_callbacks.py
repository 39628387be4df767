"""Stand-in: the callback lists the WebUI keeps, and the calls it makes at start-up."""

callback_map = {"callbacks_ui_tabs": [], "callbacks_ui_settings": [], "callbacks_app_started": []}


def clear_callbacks():
    for callbacks in callback_map.values():
        callbacks.clear()


def on_ui_tabs(callback, *, name=None):
    callback_map["callbacks_ui_tabs"].append(callback)


def on_ui_settings(callback, *, name=None):
    callback_map["callbacks_ui_settings"].append(callback)


def on_app_started(callback, *, name=None):
    callback_map["callbacks_app_started"].append(callback)


def ui_tabs_callback():
    res = []
    for callback in callback_map["callbacks_ui_tabs"]:
        res += callback() or []
    return res


def ui_settings_callback():
    for callback in callback_map["callbacks_ui_settings"]:
        callback()


def app_started_callback(demo, app):
    for callback in callback_map["callbacks_app_started"]:
        callback(demo, app)
