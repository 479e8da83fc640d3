"""Which FP32 model `kdtool eval` shows next to a reduced-precision artifact."""

from __future__ import annotations

from kdtool.cli.evaluate import fp32_reference


def test_qad_artifact_is_compared_with_the_stage_it_started_from() -> None:
    manifest = {
        "model": "student_qad",
        "precision": "int8",
        "details": {"graphs": {"model": {"quantization": {"mode": "static", "qad_init_stage": "student"}}}},
    }
    assert fp32_reference(manifest) == "student"


def test_ptq_artifact_is_compared_with_its_own_model_and_fp32_with_nothing() -> None:
    int8 = {"model": "student", "precision": "int8", "details": {"graphs": {"model": {"quantization": {}}}}}
    assert fp32_reference(int8) == "student"
    assert fp32_reference({"model": "student", "precision": "fp16"}) == "student"
    assert fp32_reference({"model": "student", "precision": "fp32"}) is None
