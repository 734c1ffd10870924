"""Helpers of the extraction tests that build networks the way the engine does."""

from __future__ import annotations


def build_extractor(loaded, layer_names, pool):
    """A loaded model's network truncated after *layer_names*: ``(network, source shapes, nodes)``."""
    from featx.extraction._network import TruncatedNetwork, probe_layers

    plan = probe_layers(loaded, layer_names, pool)
    network = TruncatedNetwork(loaded.module, plan.nodes, plan.pools, micro_batch=plan.max_images)
    return network.eval(), plan.source_shapes, plan.nodes
