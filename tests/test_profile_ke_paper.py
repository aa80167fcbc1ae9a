"""Tests for count_ke_paper / ke_paper_printed: the Knowledge Evolution paper's (Taha et al., CVPR 2021, Table 5)
operation and parameter counting convention, checked by hand on a tiny model and against the paper's printed values.

Printed values of the paper's profiler (ResNet-18, 1x3x224x224; params include the split masks):

    dense, 100 classes      3.632418 G   22.445925 M   (the paper's own log, Aircraft100 run)
    dense, 102 classes      3.632420 G   22.447974 M
    slim sr=0.5, 100        0.968435 G    5.644260 M   (the paper's own log)
    slim sr=0.5, 102        0.968436 G    5.645286 M
    dense, 200 classes      3.632521 G   22.548424 M

The exact counts are linear in the class count (params 22,445,924 + 1025 * (C - 100)). The one odd-looking value,
22.445925 at 100 classes, is float32 rounding in how the reference printed the total: it divides a float32 total by
1e6 in float32, and float32(22445924 / 1e6) = 22.44592476. The 102- and 200-class rows match the exact arithmetic
and cannot have come from that float32 path (no float32 number prints as 22.447974; the float32 path prints
3.632520 for the 200-class ops). So no single arithmetic reproduces all five rows: exact integers reproduce every
printed value except the 100-class params (1 parameter, 0.000001 M, low); the float32 emulation reproduces the
paper's log (100-class dense and slim rows) exactly and misses the 102-class params and the 200-class ops by one unit
in the 6th decimal.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resprout.errors import ConfigError
from resprout.methods.evolution.cost import count_ke_paper, ke_paper_printed
from resprout.models import build_model
from resprout.surgery.profile import profile_model


def _resnet18(num_classes: int, width: float = 1.0) -> nn.Module:
    return build_model("resnet18", in_channels=3, num_classes=num_classes, stem="imagenet", width=width)


def _g(ops: int) -> str:
    return f"{ops / 1e9:.6f}"


def _m(params: int) -> str:
    return f"{params / 1e6:.6f}"


def _truncate2(printed: str) -> str:
    """Truncate (not round) a printed decimal to 2 decimals, as the paper's table did."""
    return printed[: printed.index(".") + 3]


# --- hand-computed rules -------------------------------------------------------------------------------------------


def _tiny() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),  # with bias
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # int kernel_size: the reference's quirk
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 5),
    )


def test_tiny_model_every_rule_by_hand():
    counts = count_ke_paper(_tiny(), (2, 6, 6))
    conv = (4 * 6 * 6) * (2 * 3 * 3 * 2 - 1 + 1)  # out elements * (2*k*k*C_in - 1 + bias) = 144 * 36 = 5184
    bn = 2 * (4 * 6 * 6)  # 2 * input elements = 288
    relu = 4 * 6 * 6  # 1 * elements = 144
    maxpool = (3 - 1) * (4 * 3 * 3)  # (prod(Tensor([3])) - 1) * out elements = 2 * 36 = 72, not 8 * 36
    linear = (2 * 36 - 1) * 5  # (2*in - 1) * out = 355
    assert counts["ops"] == conv + bn + relu + maxpool + linear == 6043
    # Conv and linear weights twice (weight + split mask), biases and BN affine once, BN running stats not at all.
    assert counts["params"] == (2 * 72 + 4) + (4 + 4) + (2 * 180 + 5) == 521
    assert counts["convention"] == "ke-paper"
    assert set(counts) == {"ops", "params", "convention"}
    assert isinstance(counts["ops"], int) and isinstance(counts["params"], int)
    # The default profile is unchanged and reports true parameters: the difference is exactly the two masks.
    assert profile_model(_tiny(), (2, 6, 6)).params == 521 - 72 - 180 == 269


def test_tiny_model_printed_like_the_reference():
    assert ke_paper_printed(_tiny(), (2, 6, 6)) == {"gops": "0.000006", "mparams": "0.000521"}


def test_conv_without_bias_grouped_and_1d():
    no_bias = count_ke_paper(nn.Conv2d(8, 16, 3, padding=1, groups=4, bias=False), (8, 6, 6))
    assert no_bias["ops"] == (16 * 6 * 6) * (2 * 9 * 2 - 1) == 20160
    assert no_bias["params"] == 2 * (16 * 2 * 9)
    conv1d = count_ke_paper(nn.Conv1d(2, 3, 5, stride=2), (2, 21))  # output length 9
    assert conv1d["ops"] == (3 * 9) * (2 * 5 * 2 - 1 + 1)
    assert conv1d["params"] == 2 * 30 + 3


def test_pool_rules_int_and_tuple_kernel_avgpool_and_adaptive():
    x = (3, 8, 8)
    assert count_ke_paper(nn.MaxPool2d(2), x)["ops"] == (2 - 1) * (3 * 4 * 4)  # int 2 -> 1 per output
    assert count_ke_paper(nn.MaxPool2d((2, 2)), x)["ops"] == (4 - 1) * (3 * 4 * 4)  # tuple -> 3 per output
    # AvgPool: (kernel - 1) adds + 1 division per output element, with the same int-kernel rule.
    assert count_ke_paper(nn.AvgPool2d(2), x)["ops"] == 2 * (3 * 4 * 4)
    assert count_ke_paper(nn.AvgPool2d((2, 2)), x)["ops"] == 4 * (3 * 4 * 4)
    assert count_ke_paper(nn.AdaptiveAvgPool2d(1), x)["ops"] == 0  # not counted, as in the reference
    assert count_ke_paper(nn.Sequential(nn.GELU(), nn.Dropout(), nn.LayerNorm(8)), x) == {
        "ops": 0,
        "params": 16,  # LayerNorm affine, once
        "convention": "ke-paper",
    }


def test_linear_counts_output_elements_without_bias_ops():
    counts = count_ke_paper(nn.Linear(5, 7), (4, 5))  # 4 rows
    assert counts["ops"] == (2 * 5 - 1) * (4 * 7)
    assert counts["params"] == 2 * 35 + 7


class _SharedReLUBlock(nn.Module):
    """The reference BasicBlock's pattern: one ReLU module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.relu(x)) + x)


def test_relu_counts_per_call():
    counts = count_ke_paper(_SharedReLUBlock(), (2, 3, 3))
    assert counts["ops"] == 2 * 18 + 2 * 18  # two ReLU calls + BN
    assert counts["params"] == 4


def test_train_mode_restored_hooks_removed_no_grad():
    model = _resnet18(10, width=0.25).train()
    model.layer1[0].bn1.eval()
    before = model.bn1.running_mean.clone()
    count_ke_paper(model, (3, 32, 32))
    ke_paper_printed(model, (3, 32, 32))
    assert model.training and model.bn1.training and not model.layer1[0].bn1.training
    assert torch.equal(model.bn1.running_mean, before)  # ran in eval mode
    assert all(p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("bad", [(3, 0, 32), (), "3x224x224", None])
def test_bad_input_shape(bad):
    with pytest.raises(ConfigError, match="input_shape"):
        count_ke_paper(_tiny(), bad)


def test_model_that_cannot_run_is_a_config_error():
    model = _tiny().train()
    with pytest.raises(ConfigError, match="cannot run"):
        count_ke_paper(model, (3, 6, 6))
    assert model.training and all(not m._forward_hooks for m in model.modules())


# --- the paper's numbers -------------------------------------------------------------------------------------------

# (num_classes, width) -> exact counts
_EXACT = {
    (100, 1.0): (3_632_418_204, 22_445_924),
    (102, 1.0): (3_632_420_250, 22_447_974),
    (200, 1.0): (3_632_520_504, 22_548_424),
    (100, 0.5): (968_435_356, 5_644_260),
    (102, 0.5): (968_436_378, 5_645_286),
}
# (num_classes, width) -> values the paper's profiler printed (G-Ops, M params)
_PRINTED = {
    (100, 1.0): ("3.632418", "22.445925"),
    (102, 1.0): ("3.632420", "22.447974"),
    (200, 1.0): ("3.632521", "22.548424"),
    (100, 0.5): ("0.968435", "5.644260"),
    (102, 0.5): ("0.968436", "5.645286"),
}


@pytest.fixture(scope="module")
def measured():
    out = {}
    for key in _EXACT:
        model = _resnet18(*key)
        out[key] = (count_ke_paper(model), ke_paper_printed(model))
    return out


def test_exact_counts(measured):
    for key, (ops, params) in _EXACT.items():
        counts, _ = measured[key]
        assert (counts["ops"], counts["params"]) == (ops, params), key


def test_table5_truncated_values(measured):
    dense, _ = measured[(100, 1.0)]
    slim, _ = measured[(100, 0.5)]
    assert (_truncate2(_g(dense["ops"])), _truncate2(_m(dense["params"]))) == ("3.63", "22.44")
    assert (_truncate2(_g(slim["ops"])), _truncate2(_m(slim["params"]))) == ("0.96", "5.64")


def test_paper_log_reproduced_exactly_by_float32_emulation(measured):
    # The dense and slim 100-class rows are the paper's own log; the float32 emulation gives every digit.
    for key in [(100, 1.0), (100, 0.5)]:
        _, printed = measured[key]
        assert (printed["gops"], printed["mparams"]) == _PRINTED[key], key
    assert (_truncate2(measured[(100, 1.0)][1]["gops"]), _truncate2(measured[(100, 1.0)][1]["mparams"])) == (
        "3.63",
        "22.44",
    )


def test_exact_arithmetic_reproduces_every_printed_value_but_one(measured):
    for key, (gops, mparams) in _PRINTED.items():
        counts, _ = measured[key]
        assert _g(counts["ops"]) == gops, key
        if key == (100, 1.0):
            # The one miss: 22,445,924 exactly vs 22.445925 printed, 1 parameter (0.000001 M) low; float32 rounding.
            assert _m(counts["params"]) == "22.445924"
            assert counts["params"] == 22_445_925 - 1
        else:
            assert _m(counts["params"]) == mparams, key


def test_float32_printing_explains_the_100_class_params():
    # 22,445,924 is exactly representable in float32 (even, < 2**25), but its float32 quotient by 1e6 is not 22.445924.
    total = torch.tensor(22_445_924.0, dtype=torch.float32)
    assert int(total.item()) == 22_445_924
    quotient = (total / 1e6).item()
    assert abs(quotient - 22.44592476) < 1e-8
    assert "%f" % quotient == "22.445925"


def test_102_and_200_class_rows_are_not_from_the_float32_path(measured):
    # The float32 path prints one unit lower in the 6th decimal for the 102-class params and the 200-class ops ...
    assert measured[(102, 1.0)][1] == {"gops": "3.632420", "mparams": "22.447973"}
    assert measured[(200, 1.0)][1] == {"gops": "3.632520", "mparams": "22.548424"}
    # ... and no float32 number at all prints as 22.447974: its two float32 neighbours print .973 and .975.
    below = torch.tensor(22.447974, dtype=torch.float32)
    above = torch.nextafter(below, torch.tensor(100.0))
    assert below.item() < 22.447974 < above.item()
    assert ("%f" % below.item(), "%f" % above.item()) == ("22.447973", "22.447975")
    # The slim 102-class row agrees in both arithmetics.
    assert measured[(102, 0.5)][1] == {"gops": "0.968436", "mparams": "5.645286"}


def test_counts_are_exactly_linear_in_class_count(measured):
    base_ops, base_params = _EXACT[(100, 1.0)]
    for classes in (102, 200):
        counts, _ = measured[(classes, 1.0)]
        extra = classes - 100
        assert counts["params"] - base_params == extra * (2 * 512 + 1)  # weight + mask + bias per class
        assert counts["ops"] - base_ops == extra * (2 * 512 - 1)


def test_against_true_counts():
    # The paper's params are the true weights plus one mask per conv/linear weight: 11.2278 M -> 22.4459 M dense,
    # 2.8246 M -> 5.6443 M slim.
    for width, true_params, ke_params in [(1.0, 11_227_812, 22_445_924), (0.5, 2_824_580, 5_644_260)]:
        model = _resnet18(100, width)
        masks = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        assert profile_model(model, (3, 224, 224)).params == true_params
        assert true_params + masks == ke_params
