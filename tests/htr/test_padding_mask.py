"""A line's recognition does not depend on its batch: padded frames are masked in the encoder
(SE gate, zeroed columns) and as attention keys, eagerly and in the exported ONNX graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from kdtool_htr.datasets import HTRDataOptions
from kdtool_htr.models import HTRJand, SelfAttention, valid_frames
from kdtool_htr.task import HTROptions, HTRTask

TINY_MODEL = {"channels": [4, 8, 8, 12], "d_model": 16, "heads": 2, "layers": 2}


def _line(width: int, seed: int = 0) -> torch.Tensor:
    """An ink-like line (1, 1, 32, width) whose last column carries ink."""
    g = torch.Generator().manual_seed(seed)
    line = torch.rand(1, 1, 32, width, generator=g) * (torch.rand(1, 1, 32, width, generator=g) > 0.6)
    line[..., -1] = 0.5
    return line


def _padded(line: torch.Tensor, width: int, others: int = 0) -> torch.Tensor:
    """``line`` zero padded to ``width`` as row 0 of a batch with ``others`` full-width lines."""
    batch = torch.zeros(1 + others, 1, 32, width)
    batch[0, ..., : line.shape[-1]] = line
    for k in range(others):
        batch[1 + k] = _line(width, seed=10 + k)[0]
    return batch


def test_valid_frames_reads_the_last_inked_column() -> None:
    images = torch.zeros(3, 1, 32, 40)
    images[0, ..., 21] = 1.0  # last ink at column 21 -> 22 columns -> 6 frames
    images[1, ..., :40] = 0.2  # ink to the end -> 10 frames
    assert valid_frames(images).tolist() == [6, 10, 1]  # a blank line keeps one frame


def test_line_output_is_unchanged_when_the_batch_padding_grows() -> None:
    torch.manual_seed(0)
    model = HTRJand(num_classes=11, **TINY_MODEL).eval()
    line = _line(44)
    frames = 11
    with torch.no_grad():
        alone = model(line)
        small = model(_padded(line, 48))
        large = model(_padded(line, 160, others=2))
    assert alone.shape[1] == frames
    torch.testing.assert_close(small[:, :frames], alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(large[:1, :frames], alone, atol=1e-5, rtol=0)


def test_attention_gives_padded_keys_zero_weight() -> None:
    torch.manual_seed(1)
    attn = SelfAttention(8, 2, locality=True)
    x = torch.randn(2, 6, 8)
    key_valid = torch.tensor([[True] * 4 + [False] * 2, [True] * 6])
    _, weights = attn.attention(x, key_valid)
    assert torch.all(weights[0, :, :, 4:] == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 6))
    # the valid part equals attention over the unpadded sequence
    out, _ = attn.attention(x, key_valid)
    alone, _ = attn.attention(x[:1, :4])
    torch.testing.assert_close(out[:1, :4], alone, atol=1e-6, rtol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_exported_graph_gives_the_same_output_for_a_line_padded_two_ways(tmp_path: Path) -> None:
    import onnxruntime as ort
    from kdtool_onnx.exporter import OnnxOptions, export_graph

    data = HTRDataOptions(
        embedded={"digit_lines": 4, "font_lines": 2, "val_digit_lines": 2, "val_font_lines": 2}
    )
    task = HTRTask(HTROptions(report_lines=2), data, seed=0, cache_dir=tmp_path)
    torch.manual_seed(2)
    model = HTRJand(**task.model_options("student", "htr_jand", dict(TINY_MODEL))).eval()
    (graph,) = task.export_spec(model, "student").graphs
    path = tmp_path / "htr.onnx"
    info = export_graph(graph, path, OnnxOptions(), target="onnx")
    assert info["exporter"] in ("dynamo", "torchscript")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    line = _line(60, seed=3)
    frames = 15
    with torch.no_grad():
        alone = model(line).numpy()
    short = session.run(None, {"image": _padded(line, 64).numpy()})[0]
    long = session.run(None, {"image": _padded(line, 200, others=1).numpy()})[0]
    np.testing.assert_allclose(short[:1, :frames], alone, atol=1e-4)
    np.testing.assert_allclose(long[:1, :frames], alone, atol=1e-4)
    np.testing.assert_allclose(long[:1, :frames], short[:1, :frames], atol=1e-4)
