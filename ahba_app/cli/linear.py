"""Nipype's Linear plugin, one sub-workflow after the other.

Nipype's Linear plugin runs the nodes in a topological order of the graph: for a run over
several atlases, stage by stage across the atlases (every atlas's match, then every atlas's
normalize, ...). :class:`SubWorkflowOrder` runs the same nodes, one after the other in this
process, in :func:`sub_workflow_order`: the nodes of one atlas together, then the next atlas,
so that what they share (the atlas loaded once by :func:`ahba_app.bids.remembering_atlases`,
which keeps only the last atlases, and their files in the page cache) is still there.
"""

from __future__ import annotations

import networkx as nx
from nipype.pipeline.plugins.linear import LinearPlugin

__all__ = ["SubWorkflowOrder", "sub_workflow_order"]


def sub_workflow_order(graph: nx.DiGraph) -> list:
    """The nodes of an execution graph in an order that runs every node after those it needs
    and, among the nodes ready to run, prefers the sub-workflow that Nipype's own order meets
    first (then Nipype's order)."""
    default = list(nx.topological_sort(graph))
    rank: dict = {}
    for node in default:
        rank.setdefault(node._hierarchy or "", len(rank))
    position = {node: i for i, node in enumerate(default)}
    return list(nx.lexicographical_topological_sort(
        graph, key=lambda node: (rank[node._hierarchy or ""], position[node])))


class SubWorkflowOrder(LinearPlugin):
    """Linear, in :func:`sub_workflow_order`: Nipype's plugin is given the graph plus an edge
    from each node to the next one of that order (edges that only pin one of the graph's valid
    orders); failures, crash files and the nodes not run are Nipype's own handling."""

    def run(self, graph, config, updatehash=False):
        order = sub_workflow_order(graph)
        pinned = graph.copy()
        pinned.add_edges_from(zip(order, order[1:]))
        return super().run(pinned, config, updatehash=updatehash)
