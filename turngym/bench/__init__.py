"""Benchmarks that ship with the package: ``turngym bench credit-accuracy``, ``provider-quality`` and ``study``.

* `turngym.bench.credit_accuracy`: where each credit method puts its advantage on a shared batch of HopQA
  rollouts, compared with the env's ground-truth turn values.
* `turngym.bench.provider_quality`: each credit signal (gold probe, SIOP support, tool match, GiGPO anchors) on its
  own against the same ground truth.
* `turngym.bench.study`: learning efficiency of the credit methods from one shared SFT checkpoint.
* `turngym.bench.sft`: the shared SFT warm start, saved once with ``save_pretrained`` and reused.

Each benchmark writes a markdown table and PNG charts into an output directory.
"""

from __future__ import annotations

#: ``turngym bench NAME`` -> ``"module:function"`` (``main(argv) -> int``), imported only when run.
BENCHMARKS: dict[str, str] = {
    "credit-accuracy": "turngym.bench.credit_accuracy:main",
    "provider-quality": "turngym.bench.provider_quality:main",
    "study": "turngym.bench.study:main",
}

__all__ = ["BENCHMARKS"]
