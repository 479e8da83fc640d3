"""README's evidence table from `kdtool study` directories (their study.json).

    python bench/evidence_table.py runs/image_classification/study-*/ runs/facial_landmarks/study-*/
    python bench/evidence_table.py STUDY_DIR ... --readme README.md   # rewrite the marked section

One row per student/baseline pair: the primary metric's mean ± std over seeds for the teacher(s),
the student and its baseline, the paired difference (student - baseline) ± std, its 95 %
Student-t confidence interval, wins k/N and the verdict. With ``--readme`` the text between
``<!-- evidence:start -->`` and ``<!-- evidence:end -->`` is replaced (atomically).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from kdtool.io import read_json, write_text
from kdtool.study import HELPED, HURT, NO_DIFFERENCE, fmt_pm, pair_cells

START, END = "<!-- evidence:start -->", "<!-- evidence:end -->"


def load(path: Path) -> dict[str, Any]:
    """A study.json, from its file or its study directory."""
    return read_json(path if path.suffix == ".json" else path / "study.json", what="study")


def rows(study: dict[str, Any]) -> list[str]:
    metric = study["primary_metric"]["name"]
    arrow = "↑" if study["primary_metric"]["higher_is_better"] else "↓"
    models = study["models"]
    teachers = [n for n, m in models.items() if m.get("role") == "teacher"]
    teacher = "; ".join(fmt_pm(models[t]["metrics"].get(metric)) for t in teachers) or "-"
    steps = f", --max-steps {study['max_steps']}" if study.get("max_steps") else ""
    sets = "".join(f", `{o}`" for o in study.get("overrides", []) if not o.startswith("runs_dir="))
    out = []
    for p in study["pairs"]:
        diff, ci, wins, verdict = pair_cells(p)
        out.append(
            f"| {study['recipe']}{steps}{sets} | {metric} {arrow} | {len(study['seeds'])} | {teacher} | "
            f"{p['student']}: {fmt_pm(models[p['student']]['metrics'].get(metric))} | "
            f"{p['baseline']}: {fmt_pm(models[p['baseline']]['metrics'].get(metric))} | "
            f"{diff} | {ci} | {wins} | **{verdict}** |"
        )
    return out


def table(studies: list[dict[str, Any]]) -> str:
    lines = [
        "| recipe | metric | seeds | teacher(s) | student | baseline | difference (student - baseline) "
        "| 95% CI | wins | verdict |",
        "|---|---|---:|---|---|---|---:|---|---:|---|",
    ]
    for study in studies:
        lines += rows(study)
    lines.append("")
    for study in studies:
        lines += sentences(study)
    return "\n".join(lines) + "\n"


def sentences(study: dict[str, Any]) -> list[str]:
    """One plain-words line per pair, saying where distillation did not help."""
    out = []
    for p in study["pairs"]:
        ci = p.get("ci")
        where = f"the 95% CI [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "no CI (one seed)"
        if p["verdict"] == HELPED:
            reading = f"distillation helped: {where} excludes zero"
        elif p["verdict"] == NO_DIFFERENCE:
            reading = f"distillation did not detectably help: {where} contains zero"
        elif p["verdict"] == HURT:
            reading = f"distillation hurt: {where} is on the wrong side of zero"
        else:
            reading = p["verdict"]
        out.append(
            f"- `{study['recipe']}`, {p['student']} vs {p['baseline']} ({study['primary_metric']['name']}, "
            f"{len(study['seeds'])} seeds): {reading}; the student won {p['wins']} of {p['n']} seeds."
        )
    return out


def replace_section(readme: Path, text: str) -> None:
    content = readme.read_text(encoding="utf-8")
    if START not in content or END not in content:
        sys.exit(f"{readme} has no {START} ... {END} section")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    write_text(readme, f"{head}{START}\n{text}{END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", type=Path, nargs="+", help="study directories or study.json files")
    parser.add_argument("--readme", type=Path, default=None, help="rewrite this file's evidence section")
    args = parser.parse_args(argv)
    text = table([load(p) for p in args.studies])
    print(text, end="")
    if args.readme is not None:
        replace_section(args.readme, text)
        print(f"updated {args.readme}")


if __name__ == "__main__":
    main()
