"""YOLOv4 matches darknet's cfg/yolov4.cfg: state size, output shapes and FLOPs."""

from __future__ import annotations

import pytest
import torch

from fedsim.ml.flops import forward_flops, train_flops
from fedsim.ml.yolov4 import YOLOv4

# Floats in darknet's yolov4.weights: (257,717,640 bytes - 20-byte header) / 4.
DARKNET_STATE_VALUES = 64_429_405
DARKNET_WEIGHTS_BYTES = 257_717_640
DARKNET_HEADER_BYTES = 20
# Darknet prints "Total BFLOPS 128.459" for cfg/yolov4.cfg at 608x608.
DARKNET_FORWARD_FLOPS_608 = 128.459e9


@pytest.fixture(scope="module")
def meta_model() -> YOLOv4:
    with torch.device("meta"):
        return YOLOv4(num_classes=80)


def test_state_values_equal_darknet_weights_file(meta_model: YOLOv4) -> None:
    # Prepare
    float_buffers = [b for b in meta_model.buffers() if b.is_floating_point()]

    # Execute
    parameters = sum(p.numel() for p in meta_model.parameters())
    buffers = sum(b.numel() for b in float_buffers)

    # Assert
    assert parameters + buffers == DARKNET_STATE_VALUES
    assert 4 * (parameters + buffers) + DARKNET_HEADER_BYTES == DARKNET_WEIGHTS_BYTES


def test_only_prediction_convs_have_bias(meta_model: YOLOv4) -> None:
    # Prepare
    convs = [m for m in meta_model.modules() if isinstance(m, torch.nn.Conv2d)]

    # Execute
    with_bias = [c for c in convs if c.bias is not None]

    # Assert
    assert len(convs) == 110  # darknet's yolov4.cfg has 110 [convolutional] sections
    assert [c.out_channels for c in with_bias] == [255, 255, 255]


def test_forward_gives_three_heads_at_strides_8_16_32() -> None:
    # Prepare
    torch.manual_seed(0)
    model = YOLOv4(num_classes=80).eval()
    x = torch.randn(1, 3, 64, 64)

    # Execute
    with torch.no_grad():
        outputs = model(x)

    # Assert
    assert [tuple(o.shape) for o in outputs] == [(1, 255, 8, 8), (1, 255, 4, 4), (1, 255, 2, 2)]
    assert all(torch.isfinite(o).all() for o in outputs)


def test_forward_channels_follow_num_classes() -> None:
    # Prepare
    with torch.device("meta"):
        model = YOLOv4(num_classes=20)

    # Execute
    outputs = model(torch.zeros(1, 3, 64, 64, device="meta"))

    # Assert
    assert [o.shape[1] for o in outputs] == [75, 75, 75]


def test_forward_flops_at_608_match_darknet(meta_model: YOLOv4) -> None:
    # Execute
    flops = forward_flops(meta_model, (1, 3, 608, 608))

    # Assert
    assert flops == pytest.approx(DARKNET_FORWARD_FLOPS_608, rel=0.02)


def test_train_flops_are_about_three_forwards(meta_model: YOLOv4) -> None:
    # Prepare
    shape = (1, 3, 608, 608)
    forward = forward_flops(meta_model, shape)

    # Execute
    train = train_flops(meta_model.train(), shape)

    # Assert
    assert 2.5 * forward < train < 3.5 * forward


def test_flops_scale_with_batch(meta_model: YOLOv4) -> None:
    # Execute
    one = forward_flops(meta_model, (1, 3, 256, 256))
    four = forward_flops(meta_model, (4, 3, 256, 256))

    # Assert
    assert four == 4 * one
