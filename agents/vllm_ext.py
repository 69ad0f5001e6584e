"""vLLM worker extension used by `VLLMPolicy.load_weights` (loaded inside vLLM's worker processes).

Passed as ``worker_extension_cls="turngym.agents.vllm_ext.WeightSync"``; vLLM mixes it into its worker class,
so ``LLM.collective_rpc("turngym_load_weights_file", args=(path,))`` runs on every worker. The weights travel
as a safetensors file (vLLM's RPC serialiser does not carry arbitrary tensors inside argument lists).
Importing this module needs no vLLM.
"""

from __future__ import annotations


class WeightSync:
    """Methods added to each vLLM worker."""

    def turngym_load_weights_file(self, path: str) -> bool:
        """Load a safetensors file of Hugging Face-named parameters into the worker's model."""
        from safetensors.torch import load_file

        weights = load_file(path)
        runner = self.model_runner  # type: ignore[attr-defined]
        if hasattr(runner, "reload_weights"):
            # vLLM >= 0.2x: layerwise in-place reload re-runs process_weights_after_loading, so backends that
            # repack weights after loading (the CPU backend empties the original Linear params) accept new ones
            runner.reload_weights(weights_iterator=iter(weights.items()), is_checkpoint_format=True)
        else:
            runner.model.load_weights(weights=list(weights.items()))
        return True
