"""The extension as the WebUI loads it: preload flags, scripts/sagemaker.py by path, the callbacks it registers.

The WebUI itself is never imported: tests/webui_standin holds a minimal stand-in of its `modules` package.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STANDIN = Path(__file__).resolve().parent / "webui_standin"
KEYS = ["sagemaker_region", "sagemaker_profile", "sagemaker_bucket", "sagemaker_role_arn", "sagemaker_image_uri",
        "sagemaker_allow_private_urls"]
AWS_VARS = ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "SD_SAGEMAKER_BUCKET", "SD_SAGEMAKER_ROLE_ARN",
            "SD_SAGEMAKER_IMAGE_URI"]


def load_by_path(path: Path, basedir: Path):
    """As the WebUI imports extension files: a module named after the file, basedir first on sys.path meanwhile."""
    saved = list(sys.path)
    sys.path.insert(0, str(basedir))
    try:
        spec = importlib.util.spec_from_file_location(path.name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path[:] = saved


def webui_parser(models: Path, data: Path) -> argparse.ArgumentParser:
    """The WebUI's own model-folder flags (cmd_args.py, the Lora extension's preload), then ours from preload.py."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt-dir", type=str, default=None)
    parser.add_argument("--vae-dir", type=str, default=None)
    parser.add_argument("--embeddings-dir", type=str, default=str(data / "embeddings"))
    parser.add_argument("--hypernetwork-dir", type=str, default=str(models / "hypernetworks"))
    parser.add_argument("--lora-dir", type=str, default=str(models / "Lora"))
    load_by_path(ROOT / "preload.py", ROOT).preload(parser)
    return parser


@pytest.fixture
def webui(tmp_path, monkeypatch):
    """The stand-in `modules` imported, our preload flags parsed, scripts/sagemaker.py loaded; undone afterwards."""
    saved = {name: mod for name, mod in sys.modules.items() if name == "modules" or name.startswith("modules.")}
    for name in saved:
        del sys.modules[name]
    monkeypatch.syspath_prepend(str(STANDIN))
    from modules import paths_internal, script_callbacks, shared

    data = tmp_path / "webui"
    models = data / "models"
    monkeypatch.setattr(paths_internal, "data_path", str(data))
    monkeypatch.setattr(paths_internal, "models_path", str(models))
    for name in AWS_VARS:
        monkeypatch.delenv(name, raising=False)
    parser = webui_parser(models, data)
    shared.cmd_opts = parser.parse_args([])
    script_callbacks.clear_callbacks()
    load_by_path(ROOT / "scripts" / "sagemaker.py", ROOT)
    try:
        yield argparse.Namespace(parser=parser, shared=shared, callbacks=script_callbacks, data=data, models=models)
    finally:
        for name in [n for n in sys.modules if n == "modules" or n.startswith("modules.")]:
            del sys.modules[name]
        sys.modules.update(saved)


@pytest.fixture
def started(webui, monkeypatch):
    """on_app_started run on a real FastAPI app; the start-up reconcile recorded instead of calling AWS."""
    from fastapi import FastAPI

    import aws_extension.ui.standalone as standalone

    contexts = []
    monkeypatch.setattr(standalone, "reconcile_in_background", contexts.append)
    app = FastAPI()
    webui.callbacks.app_started_callback(None, app)
    assert len(contexts) == 1
    webui.app, webui.ctx = app, contexts[0]
    return webui


def test_preload_adds_our_flags():
    parser = argparse.ArgumentParser()
    load_by_path(ROOT / "preload.py", ROOT).preload(parser)
    opts = parser.parse_args(["--sagemaker-region", "eu-west-1", "--sagemaker-profile", "work",
                              "--sagemaker-bucket", "b", "--sagemaker-role-arn", "arn:aws:iam::1:role/r",
                              "--sagemaker-image-uri", "1.dkr.ecr/x:1", "--sagemaker-allow-private-urls"])
    assert (opts.sagemaker_region, opts.sagemaker_profile, opts.sagemaker_bucket, opts.sagemaker_role_arn,
            opts.sagemaker_image_uri, opts.sagemaker_allow_private_urls) == \
        ("eu-west-1", "work", "b", "arn:aws:iam::1:role/r", "1.dkr.ecr/x:1", True)
    defaults = parser.parse_args([])
    assert [getattr(defaults, k) for k in KEYS] == [None] * 5 + [False]
    assert all(action.help for action in parser._actions if action.dest in KEYS)


def test_script_registers_one_callback_of_each_kind(webui):
    m = webui.callbacks.callback_map
    assert [len(m["callbacks_ui_settings"]), len(m["callbacks_ui_tabs"]), len(m["callbacks_app_started"])] == [1, 1, 1]


def test_settings_section_and_options(webui):
    import gradio as gr

    webui.callbacks.ui_settings_callback()
    labels = webui.shared.opts.data_labels
    assert list(labels) == KEYS
    assert {info.section for info in labels.values()} == {("sagemaker", "Amazon SageMaker")}
    assert all(labels[k].component is gr.Textbox and labels[k].default == "" for k in KEYS[:5])
    assert labels["sagemaker_allow_private_urls"].component is gr.Checkbox
    assert labels["sagemaker_allow_private_urls"].default is False
    assert all(info.label and "--sagemaker-" in info.comment_after for info in labels.values())
    # registered defaults are readable as attributes, as the WebUI's code reads them
    assert webui.shared.opts.sagemaker_bucket == "" and webui.shared.opts.sagemaker_allow_private_urls is False


def test_the_tab_builds_with_gradio_3(webui, aws_env):
    import gradio as gr

    [(blocks, title, elem_id)] = webui.callbacks.ui_tabs_callback()
    assert isinstance(blocks, gr.Blocks) and (title, elem_id) == ("Amazon SageMaker", "sagemaker")
    assert gr.__version__.startswith("3.41") or int(gr.__version__.split(".")[0]) >= 4


def test_app_started_adds_the_routes_and_reconciles(started):
    from fastapi import FastAPI

    from aws_extension.ui.routes import add_routes

    ours = sorted(r.path for r in started.app.routes if r.path.startswith("/sagemaker/"))
    assert ours, "no /sagemaker/... route was added"
    alone = FastAPI()
    add_routes(alone, started.ctx)
    assert ours == sorted(r.path for r in alone.routes if r.path.startswith("/sagemaker/"))


def test_settings_precedence_flag_over_environment_over_option(started, monkeypatch):
    shared = started.shared
    shared.cmd_opts = started.parser.parse_args(["--sagemaker-region", "us-west-2"])
    started.callbacks.ui_settings_callback()
    shared.opts.data.update(sagemaker_region="ap-northeast-1", sagemaker_bucket="option-bucket",
                            sagemaker_role_arn="arn:option", sagemaker_image_uri="", sagemaker_profile="")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("SD_SAGEMAKER_BUCKET", "env-bucket")
    s = started.ctx.settings()
    assert (s.region, s.bucket, s.role_arn, s.image_uri, s.profile) == \
        ("us-west-2", "env-bucket", "arn:option", None, None)
    assert s.allow_private_urls is False

    # read again on every call: a setting changed in the WebUI counts at once
    shared.opts.data.update(sagemaker_image_uri="image:1", sagemaker_allow_private_urls=True)
    monkeypatch.delenv("SD_SAGEMAKER_BUCKET")
    s = started.ctx.settings()
    assert (s.bucket, s.image_uri, s.allow_private_urls) == ("option-bucket", "image:1", True)

    shared.opts.data["sagemaker_allow_private_urls"] = False
    shared.cmd_opts = started.parser.parse_args(["--sagemaker-allow-private-urls"])
    assert started.ctx.settings().allow_private_urls is True


def test_settings_before_the_options_are_registered(started):
    # with --nowebui on_ui_settings never runs: config.json's values and missing keys must both work
    started.shared.opts.data["sagemaker_bucket"] = "saved-bucket"
    s = started.ctx.settings()
    assert (s.bucket, s.region, s.allow_private_urls) == ("saved-bucket", None, False)


def test_model_folders_follow_the_flags(started, tmp_path):
    models, data = started.models, started.data
    ckpt, lora, cn = tmp_path / "ckpt", tmp_path / "lora", tmp_path / "cn"
    present = [models / "Stable-diffusion", ckpt, models / "VAE", lora, data / "embeddings", models / "ControlNet", cn]
    for folder in present:
        folder.mkdir(parents=True)
    (models / "Lora").mkdir()  # the default, replaced by --lora-dir
    started.shared.cmd_opts = started.parser.parse_args(["--ckpt-dir", str(ckpt), "--lora-dir", str(lora)])
    started.shared.opts.data["control_net_models_path"] = str(cn)
    folders = started.ctx.model_folders()
    assert sorted(folders) == sorted(str(p) for p in present)  # hypernetworks: missing, skipped

    # a WebUI without the Lora extension has no --lora-dir: the default folder, no crash
    started.shared.cmd_opts = argparse.Namespace()
    assert str(models / "Lora") in started.ctx.model_folders()


def test_the_package_imports_without_the_webui():
    code = ("import sys, aws_extension.webui.glue, aws_extension.ui.tab; "
            "assert 'modules' not in sys.modules, 'the WebUI was imported'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)


def test_the_core_and_the_contract_import_neither_gradio_nor_the_webui():
    """What the CLI, the tab, the script and the server build on stays plain Python over boto3."""
    code = ("import pkgutil, sys, aws_extension.core as core, aws_extension.contract as contract; "
            "[__import__(m.name) for p in (core, contract) for m in pkgutil.walk_packages(p.__path__, p.__name__ + '.')]; "
            "found = [m for m in ('gradio', 'modules', 'torch') if m in sys.modules]; "
            "assert not found, f'imported {found}'")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=120)
