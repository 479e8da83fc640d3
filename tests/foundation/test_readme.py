"""README and docs/ stand on their own: every link points inside the repository, and the
Quick start block holds the commands .ci/run runs (item 2 and item 1 of the clean-clone trial)."""

from __future__ import annotations

import re

from tests.helpers import REPO

LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def _docs() -> list:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def test_docs_link_only_inside_the_repository() -> None:
    for doc in _docs():
        text = doc.read_text(encoding="utf-8")
        assert "../shared" not in text and "/work/" not in text, doc
        prose = re.sub(r"`[^`]*`", "", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
        for target in LINK.findall(prose):
            if re.match(r"[a-z]+://", target):
                continue
            resolved = (doc.parent / target).resolve()
            assert resolved.is_relative_to(REPO), (doc.name, target)
            assert resolved.exists(), (doc.name, target)
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "(docs/methods.md)" in readme


def test_quick_start_is_what_ci_runs() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0].splitlines()
    assert block[0].startswith("python3.11 -m venv ")
    assert block[1].startswith('python -m pip install -c constraints.txt -e ".[all,dev]"')
    assert block[2].startswith("python -m pytest ")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "-m venv" in ci and '"python -m pip install "*' in ci and '"python -m pytest "*' in ci
    assert "chromium" in ci
