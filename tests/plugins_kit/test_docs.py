"""docs/plugins.md cannot drift from kdtool/hookspecs.py, and its code examples are valid."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from kdtool import hookspecs
from kdtool.cli import main
from kdtool.scaffold import hookdocs
from tests.helpers import REPO

DOC = REPO / "docs" / "plugins.md"


def test_hook_reference_in_docs_is_generated_from_hookspecs() -> None:
    assert hookdocs.is_current(DOC), (
        "docs/plugins.md is out of date: run `kdtool plugins docs --write docs/plugins.md`"
    )


def test_every_hook_has_its_signature_and_whole_docstring_in_the_docs() -> None:
    text = DOC.read_text()
    for hook in hookspecs.ALL_HOOKS:
        assert f"#### `{hook}`" in text
        assert f"def {hook}(" in text
        first_line = (getattr(hookspecs, hook).__doc__ or "").strip().splitlines()[0]
        assert hookdocs._markdown(first_line) in text
    assert f"Plugin API version **{hookspecs.PLUGIN_API_VERSION}**" in text


def test_a_changed_hookspec_is_detected_as_drift(tmp_path: Path) -> None:
    stale = tmp_path / "plugins.md"
    stale.write_text(DOC.read_text().replace("Register task classes", "Register tusk classes"))
    assert not hookdocs.is_current(stale)
    assert main(["plugins", "docs", "--check", str(stale)]) == 4  # a plugin error, with the fix
    assert main(["plugins", "docs", "--check", str(DOC)]) == 0
    assert main(["plugins", "docs", "--write", str(stale)]) == 0
    assert hookdocs.is_current(stale) and stale.read_text() == DOC.read_text()


def test_docs_cover_publishing_blocking_and_api_versions() -> None:
    text = DOC.read_text()
    assert "[project.entry-points.kdtool]" in text
    assert "KDTOOL_DISABLE_PLUGINS=" in text and "KDTOOL_PLUGIN_API" in text and "incompatible" in text
    for check in ("check_task", "check_exporter", "check_loss", "check_target", "check_plugin"):
        assert f"`{check}(" in text
    assert "kdtool plugins new" in text


def test_code_blocks_in_the_docs_are_valid() -> None:
    text = DOC.read_text()
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        compile(block, "docs/plugins.md", "exec")
    for block in re.findall(r"```toml\n(.*?)```", text, re.S):
        tomllib.loads(block)
