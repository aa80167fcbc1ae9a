"""resprout's channel coupling (:mod:`resprout.surgery.channels`) against an independent tracer, torch-pruning's
``DependencyGraph`` (the ``[test]`` extra; the library itself never imports it).

For every conv that writes feature-map channels (depthwise convs only follow their input), the convs whose output
channels must shrink with it are the same in both: residual partners and shortcut convs share a group, the inputs
of a concatenation do not, a grouped conv writes its own group.
"""

from __future__ import annotations

import pytest
from torch import nn

from resprout.models import build_model
from resprout.surgery.channels import channel_groups, example_input
from resprout.surgery.graph import trace
from tests.real_models import GROUPED, GroupedNet

tp = pytest.importorskip("torch_pruning")

MODELS = [("cnn", {}), ("resnet20", {"width": 0.25}), ("resnet18", {"width": 0.125}),
          ("mobilenetv2", {"width": 0.25}), ("densenet-bc", {"depth": 40, "width": 0.5}), ("vgg11", {"width": 0.125}),
          ("wrn-16-4", {"width": 0.25})]


def _depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


def _producer(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and not _depthwise(m)


@pytest.mark.parametrize("name,options", MODELS, ids=[m for m, _ in MODELS])
def test_coupled_convs_match_torch_pruning(name, options):
    model = build_model(name, in_channels=3, num_classes=10, **options).eval()
    ours = _coupled(model)
    assert ours and ours == _torch_pruning_coupled(model)
    assert any(len(s) > 1 for s in ours.values()) == name.startswith(("resnet", "wrn", "mobilenet"))


@pytest.mark.parametrize("name", ["resnext", "regnety"])
def test_grouped_convs_are_coupled_as_torch_pruning_couples_them(name):
    # a grouped conv writes its own group (its input is another layer's group, cut alike in every block); RegNetY's
    # squeeze-excitation gate ties its fc2 to the grouped conv's output
    model = GroupedNet(**GROUPED[name]).eval()
    ours = _coupled(model)
    assert ours == _torch_pruning_coupled(model)
    assert ours["block1.conv2"] == ({"block1.conv2", "block1.se.fc2"} if name == "regnety" else {"block1.conv2"})


def _coupled(model: nn.Module) -> dict[str, frozenset]:
    example = example_input((3, 32, 32))
    ours = {}
    for group in channel_groups(trace(model, example)).values():
        writers = frozenset(w for w in group.writers if _producer(model.get_submodule(w)))
        ours.update({w: writers for w in writers})
    return ours


def _torch_pruning_coupled(model: nn.Module) -> dict[str, frozenset]:
    example = example_input((3, 32, 32))
    names = {module: path for path, module in model.named_modules()}
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    model.train()  # build_dependency leaves the model in eval mode
    theirs = {}
    for path, conv in model.named_modules():
        if _producer(conv):
            group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
            theirs[path] = frozenset(names[dep.target.module] for dep, _ in group
                                     if _producer(dep.target.module) and graph.is_out_channel_pruning_fn(dep.handler))
    return theirs
