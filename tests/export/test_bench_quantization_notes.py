"""`kdtool bench` says why an INT8 artifact may not pay (weight-only mode, a static attempt that
fell back, what stayed float), from what the exporter recorded in the manifest."""

from __future__ import annotations

from kdtool.cli.bench import quantization_notes


def test_weight_only_int8_is_explained_with_its_static_fallback() -> None:
    notes = quantization_notes(
        "recognizer",
        {
            "mode": "dynamic",
            "fallback_from_static": "axis 'width' fixed at 256",
            "summary": {
                "quantize_nodes": 25,
                "dequantize_nodes": 0,
                "quantized_ops": {"ConvInteger": 5},
                "float_ops": {"Softmax": 4, "MatMul": 8},
            },
        },
    )
    assert len(notes) == 2
    assert "weight-only" in notes[0] and "ConvInteger" in notes[0]
    assert "axis 'width' fixed at 256" in notes[0]
    assert "25 QuantizeLinear / 0 DequantizeLinear" in notes[1]
    assert "Softmax x4, MatMul x8" in notes[1]


def test_static_int8_lists_only_what_stayed_float() -> None:
    notes = quantization_notes(
        "model", {"mode": "static", "summary": {"quantize_nodes": 3, "dequantize_nodes": 4, "float_ops": {}}}
    )
    assert notes == [
        "INT8 graph 'model': 3 QuantizeLinear / 4 DequantizeLinear nodes; ops left in float: none"
    ]
    assert quantization_notes("model", {}) == []
