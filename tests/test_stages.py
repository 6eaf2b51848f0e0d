"""One list of stages (ahba_app.stages) builds both front ends: the functions take the stage's
options, the interfaces have them as inputs, the workflows have one node per stage given those
options, and the Python API's engine calls the stages in the listed order with them."""

from __future__ import annotations

import importlib
import inspect
import warnings

import pytest

from ahba_app import options, pipeline
from ahba_app.stages import RUN_INPUTS, STAGES, producers, stage_options

#: Settings where every option differs from its default (so that a value that did not come
#: through the stage list would show).
CHANGED = dict(ibf_threshold=0.3, probe_selection="max_intensity", donor_probes="independent",
               sim_threshold=2.0, lr_mirror="bidirectional", missing="centroids", tolerance=1.0,
               sample_norm="zscore", gene_norm="minmax", norm_matched=False,
               norm_structures=True, region_agg="samples", agg_metric="median",
               corrected_mni=False, reannotated=False, donors=("9861", "10021"),
               stability_threshold=0.1)


def _plain(values: dict) -> dict:
    """Lists for tuples (a node's list input holds what a Settings tuple holds)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _function(name: str):
    module, _, function = name.rpartition(".")
    return getattr(importlib.import_module(f"ahba_app.{module}") if module else pipeline,
                   function)


def _interface(stage):
    module, cls = stage.interface.split(".")
    return getattr(importlib.import_module(f"ahba_app.interfaces.{module}"), cls)


def test_the_list_is_in_an_order_that_gives_each_stage_what_it_needs():
    names = list(STAGES)
    for position, stage in enumerate(STAGES.values()):
        for need in stage.needs:
            made = [s for s in producers(stage.name) if need in STAGES[s].produces]
            assert made or need in RUN_INPUTS, (stage.name, need)
            assert all(names.index(s) < position for s in made), (stage.name, need)


def test_every_option_belongs_to_a_stage_or_to_the_run():
    used = {name for stage in STAGES.values() for name in stage.options}
    assert used | {"donors"} == set(options.OPTIONS)
    for stage in STAGES.values():
        assert set(stage.options) <= set(options.OPTIONS), stage.name


@pytest.mark.parametrize("name", list(STAGES))
def test_the_stage_functions_take_the_stage_options(name):
    stage = STAGES[name]
    for function in {stage.function, stage.api_function}:
        parameters = inspect.signature(_function(function)).parameters
        assert set(stage.options) <= set(parameters), (function, stage.options)


@pytest.mark.parametrize("name", list(STAGES))
def test_the_interfaces_take_the_stage_options_and_no_other(name):
    stage = STAGES[name]
    inputs = _interface(stage)().inputs
    option_inputs = {n for n in inputs.copyable_trait_names() if n in options.OPTIONS}
    # (several nodes take the donors as data: the order of their lists)
    assert option_inputs - {"donors"} == set(stage.options) - {"donors"}
    settings = options.Settings(**CHANGED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        node = _interface(stage)(**stage_options(settings, name))
    assert _plain(stage_options(node.inputs, name)) == _plain(stage_options(settings, name))


def test_the_workflows_have_one_node_per_stage_given_its_options(tmp_path):
    from ahba_app.bids import AtlasInput
    from ahba_app.datasets import fetch_desikan_killiany
    from ahba_app.workflows.atlas import init_atlas_wf
    from ahba_app.workflows.data import init_ahba_data_wf

    settings = options.Settings(**CHANGED)
    dk = fetch_desikan_killiany()
    atlas = AtlasInput(label="DK", entities={"atlas": "DK"}, image=str(dk["image"]),
                       info=str(dk["info"]), has_info=True, n_regions=83, constrained=True)
    flows = {"data": init_ahba_data_wf(settings=settings),
             "atlas": init_atlas_wf(atlas=atlas, analysis_level="group", out_dir=str(tmp_path),
                                    desc="test", metadata={}, parameters={},
                                    settings=settings)}
    for stage in STAGES.values():
        node = flows[stage.workflow].get_node(stage.name)
        assert node is not None, stage.name
        interface = node.interface
        assert isinstance(interface, _interface(stage)), stage.name
        inputs = interface.inputs if not hasattr(node, "iterfield") else node.inputs
        if stage.name == "fetch":  # the donors reach it from the workflow's input
            inputs = flows["data"].get_node("inputnode").inputs
        assert _plain(stage_options(inputs, stage.name)) == \
            _plain(stage_options(settings, stage.name)), stage.name


def test_the_engine_runs_the_stages_in_order_with_their_options(ahba_small, monkeypatch):
    """pipeline.run (the Python API) calls each stage's function once per call site, in the
    order of the list, with the stage's options (not streaming: agg_metric='median')."""
    from ahba_app.datasets import fetch_desikan_killiany

    calls = []
    for stage in STAGES.values():
        module_name, _, attribute = stage.api_function.rpartition(".")
        module = importlib.import_module(f"ahba_app.{module_name}") if module_name else pipeline
        real = getattr(module, attribute)

        def traced(*args, _stage=stage, _real=real, **kwargs):
            calls.append((_stage.name, {k: kwargs[k] for k in _stage.options if k in kwargs}))
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, attribute, traced)
    settings = options.Settings(donors=("9861", "10021"), agg_metric="median",
                                sample_norm="zscore", stability_threshold=0.0)
    dk = fetch_desikan_killiany()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.run(dk["image"], dk["info"], settings=settings, data_dir=ahba_small,
                     return_genes=True)
    order = [name for name, _ in calls]
    first = {name: order.index(name) for name in dict.fromkeys(order)}
    assert set(first) == set(STAGES)
    for name in STAGES:  # (the engine matches samples while the caches open: any order that
        for before in producers(name):  # gives each stage what it needs)
            assert first[before] < first[name], (before, name)
    for name, kwargs in calls:
        assert _plain(kwargs) == _plain(stage_options(settings, name)), name
