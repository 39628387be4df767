"""localizations/ja_JP.json and zh_CN.json cover every static text of the tab and of our settings, and nothing else.

The WebUI translates the page by exact match: each text node (trimmed), `placeholder` and `title` is looked up
in a flat {"English": "translation"} dictionary (javascript/localization.js). So the keys are the texts as the
browser shows them: a Markdown heading is its text without the #'s, a button its value, a radio choice its name.
Text box contents are never translated (the script skips <textarea>), nor is anything computed per click.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterable, List

import pytest

from aws_extension.core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
LANGUAGES = ["ja_JP", "zh_CN"]
# texts left as they are in every language: names and code, not words (localization.js skips numbers itself)
NOT_WORDS = re.compile(r"ml\.[\w.]+|[\d.]+|[{\[].*", re.S)
# what a translation must keep verbatim: flags, environment variables, instance types, paths, file extensions
VERBATIM = re.compile(r"--[a-z][\w-]+|\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|ml\.[\w.]+|~/\.aws/config|\.txt|\.caption|"
                      r"\bus-east-1\b|sd-webui-sagemaker-")
INLINE = re.compile(r"\*\*|__|\*|`|\[|\]\([^)]*\)|(?<!\w)_|_(?!\w)")


def markdown_texts(md: str) -> List[str]:
    """The text nodes gradio 3.41's Markdown (marked, breaks off) renders: headings, paragraphs split by inline marks."""
    blocks: List[str] = []
    paragraph: List[str] = []

    def flush():
        if paragraph:
            blocks.append("\n".join(paragraph))
            paragraph.clear()

    for line in md.splitlines():
        heading = re.match(r"\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading or not line.strip():
            flush()
            if heading:
                blocks.append(heading.group(1))
        else:
            paragraph.append(line.strip())
    flush()
    return [part.strip() for block in blocks for part in INLINE.split(block) if part.strip()]


class _Texts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.texts: List[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        self.skip += tag in ("script", "style", "textarea")
        self.texts += [v.strip() for k, v in attrs if k in ("placeholder", "title") and v and v.strip()]

    def handle_endtag(self, tag):
        self.skip -= tag in ("script", "style", "textarea")

    def handle_data(self, data):
        if not self.skip and data.strip():
            self.texts.append(data.strip())


def html_texts(html: str) -> List[str]:
    parser = _Texts()
    parser.feed(html)
    return parser.texts


def choice_names(choices) -> Iterable[str]:
    for c in choices or []:
        yield c[0] if isinstance(c, (tuple, list)) else c  # gradio 3.41 radios hold (name, value) pairs


def offline_settings():
    raise UserError("no AWS in this test")  # the connection line's status is computed (and caught) at build


def tab_texts() -> set:
    import gradio as gr

    from aws_extension.ui.context import TabContext
    from aws_extension.ui.tab import build_tab

    blocks = build_tab(TabContext(settings=offline_settings))
    found: List[str] = []
    for block in blocks.blocks.values():
        if getattr(block, "load_event_to_attach", None):  # a value computed on each page load is not static
            continue
        label = getattr(block, "label", None)
        if isinstance(label, str) and getattr(block, "show_label", True) is not False:
            found.append(label)
        for attr in ("info", "placeholder"):
            if isinstance(getattr(block, attr, None), str):
                found.append(getattr(block, attr))
        found += [str(c) for c in choice_names(getattr(block, "choices", None))]
        value = getattr(block, "value", None)
        if isinstance(value, str):
            if isinstance(block, gr.Markdown):
                found += markdown_texts(value)
            elif isinstance(block, gr.HTML):
                found += html_texts(value)
            elif isinstance(block, gr.Button):
                found.append(value)
    return {t.strip() for t in found if t and t.strip() and not NOT_WORDS.fullmatch(t.strip())}


def settings_texts() -> set:
    from aws_extension.webui import glue

    return {glue.TAB_TITLE, *glue.settings_strings()}


def script_texts() -> set:
    """The txt2img/img2img script's controls and messages (it imports the WebUI's modules: the stand-in's here)."""
    import sys

    saved = list(sys.path)
    sys.path.insert(0, str(ROOT / "tests" / "webui_standin"))
    try:
        from aws_extension.webui import script as webui_script
    finally:
        sys.path[:] = saved
    return set(webui_script.ui_strings())


@pytest.fixture(scope="module")
def expected() -> set:
    return tab_texts() | settings_texts() | script_texts()


def load(language: str) -> dict:
    return json.loads((ROOT / "localizations" / f"{language}.json").read_text(encoding="utf-8"))


def test_markdown_reader_splits_like_the_browser():
    assert markdown_texts("### Cloud Models Management") == ["Cloud Models Management"]
    assert markdown_texts("#### Deploy\nDefaults: one.\n\nClick **Set up** now.\nNext line") == \
        ["Deploy", "Defaults: one.", "Click", "Set up", "now.\nNext line"]
    assert html_texts('<div><input placeholder="Find"> Hello <b>you</b></div>') == ["Find", "Hello", "you"]


def test_the_tab_yields_its_static_texts(expected):
    # a sample the reader must find, so that an empty or broken walk cannot pass the tests below
    assert {"Amazon SageMaker", "Cloud Models Management", "from WebUI", "Upload Models to Cloud", "Async",
            "Real-time", "All", "SD Checkpoint", "Textual Inversion", "one path per line"} <= expected
    assert not any(t.startswith(("Account ", "Not connected")) for t in expected)  # the connection line is dynamic


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_static_text_is_translated(expected, language):
    table = load(language)
    missing = sorted(t for t in expected if not isinstance(table.get(t), str) or not table[t].strip())
    assert not missing, f"{language}.json lacks translations for {missing}"


@pytest.mark.parametrize("language", LANGUAGES)
def test_no_stale_keys(expected, language):
    stale = sorted(set(load(language)) - expected)
    assert not stale, f"{language}.json has keys shown nowhere in the tab or its settings: {stale}"


def test_files_are_flat_with_the_same_keys():
    tables = {language: load(language) for language in LANGUAGES}
    assert all(isinstance(v, str) for t in tables.values() for v in t.values())
    assert set(tables["ja_JP"]) == set(tables["zh_CN"])
    assert all(k == k.strip() for k in tables["ja_JP"])  # the page's texts are matched trimmed


@pytest.mark.parametrize("language", LANGUAGES)
def test_names_and_flags_survive_translation(language):
    for english, translated in load(language).items():
        for token in VERBATIM.findall(english):
            assert token in translated, f"{language}: {token!r} lost in {translated!r}"
