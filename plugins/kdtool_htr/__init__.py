"""kdtool plugin ``htr``: handwritten text recognition distilled with HTR-JAND (arXiv 2412.18524).

Registers the task ``htr``, the architecture ``htr_jand`` and the post-processors
``htr_identity`` and ``htr_lexicon``. Recipes: ``recipes/htr_jand.yaml`` (embedded default,
minutes on a CPU) and ``recipes/htr_jand_iam.yaml`` (paper scale on IAM; not reproduced here).

Method (METHODS.md section 3) and our choices for its *open* points, each a recipe option:

- Encoder: FullGatedConv2d blocks (2F filters, first F x sigmoid(last F)) with batch norm and
  Squeeze-and-Excitation, max-pooled to height ~2 and width / 4 (``models.*.options``:
  ``channels``, ``pools``). Both teacher and student pool the width by 4: same frame rate.
- Proxima attention (*open*): read as locality-biased attention with a learned per-head
  distance penalty ``softplus(slope_h) * |i - j|`` on the logits, run in parallel with a plain
  MHSA branch and fused by a linear layer over their concatenation (``layers``, ``heads``,
  ``d_model``). No attention mask: width bucketing keeps padding small.
- KD (*open*: temperature, weights): the registered ``ctc_kd`` loss on per-frame posteriors
  (KL at temperature T, x T^2, padded frames masked, frames whose teacher blank probability
  exceeds ``blank_threshold`` weighted by ``blank_weight``), plus CTC; the default recipe
  uses T = 2, blank_threshold 0.9, blank_weight 0.2 and weights ctc 1, kd 1 (stage
  ``losses``).
- Curriculum (*open*: schedule): competence-based on line length (stage
  ``options.curriculum``: ``start``, ``ramp``): lines whose length percentile exceeds
  ``sqrt(start^2 + (1 - start^2) * step / (ramp * steps))`` are skipped until the ramp ends.
- Synthetic data: lines from a corpus rendered with OFL handwriting fonts and distorted,
  plus real handwritten digits (scikit-learn ``load_digits``) composed into digit strings
  (``data.embedded``). Multi-task cross-dataset training is left to recipes that list
  several data sources in separate runs; one run trains on one ``data.source``.
- Post-processing: the paper's T5 corrector cannot be downloaded; ``task.options.
  postprocessor`` names a registered factory (built-in: ``htr_lexicon`` snaps
  out-of-lexicon words to the training lexicon; default none). Beam search with a
  character n-gram LM from the training text: ``task.options.decoding``.
"""

from __future__ import annotations

from typing import Any

from kdtool import hookimpl

KDTOOL_PLUGIN_API = "2.0"


@hookimpl
def register_tasks(register: Any) -> None:
    from .task import HTRTask

    register("htr", HTRTask, description="handwritten text lines, CTC, HTR-JAND distillation")


@hookimpl
def register_models(register: Any) -> None:
    from .models import build_htr_jand

    register(
        "htr_jand",
        build_htr_jand,
        description="gated-conv + SE encoder, MHSA + Proxima attention, CTC head (HTR-JAND)",
    )


@hookimpl
def register_postprocessors(register: Any) -> None:
    from .postprocess import identity, lexicon

    register("htr_identity", identity, description="HTR: no text correction")
    register("htr_lexicon", lexicon, description="HTR: snap out-of-lexicon words to the training lexicon")
