"""bench/evidence_table.py: README's evidence rows come from study.json, nothing typed by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

from kdtool.study import aggregate

REPO = Path(__file__).resolve().parents[2]


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("evidence_table", REPO / "bench" / "evidence_table.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(student: float, baseline: float) -> dict[str, object]:
    return {
        "primary_metric": {"name": "nme", "higher_is_better": False},
        "models": {
            "teacher": {"role": "teacher", "params": 9, "metrics": {"nme": 7.0}},
            "student": {"role": "student", "params": 3, "metrics": {"nme": student}},
            "baseline_student": {
                "role": "baseline",
                "baseline_for": "student",
                "params": 3,
                "metrics": {"nme": baseline},
            },
        },
    }


def test_table_row_and_readme_section_come_from_study_json(tmp_path: Path) -> None:
    study = aggregate({0: _summary(10.0, 11.0), 1: _summary(10.5, 11.0), 2: _summary(10.0, 10.9)})
    study.update(recipe="facial_landmarks", overrides=[], max_steps=None)
    (tmp_path / "study.json").write_text(json.dumps(study))
    mod = _module()
    text = mod.table([mod.load(tmp_path)])
    row = text.splitlines()[2]
    assert row.startswith("| facial_landmarks | nme ↓ | 3 | 7 ± 0 |")
    assert "student: 10.17 ± 0.29" in row and "baseline_student: 10.97 ± 0.058" in row
    assert "| 3/3 | **distillation helped** |" in row
    assert "- `facial_landmarks`, student vs baseline_student (nme, 3 seeds): distillation helped" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{mod.START}\nold\n{mod.END}\n\n## next\n")
    mod.replace_section(readme, text)
    content = readme.read_text()
    assert "old" not in content and row in content and content.endswith("## next\n")
