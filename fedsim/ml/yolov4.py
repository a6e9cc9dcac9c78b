"""YOLOv4 in PyTorch, layer for layer as darknet's ``cfg/yolov4.cfg``.

Reference: AlexeyAB/darknet (and pjreddie/darknet) ``cfg/yolov4.cfg``; Bochkovskiy, Wang and
Liao, "YOLOv4: Optimal Speed and Accuracy of Object Detection", arXiv:2004.10934.

- Backbone: CSPDarknet53 with Mish; five CSP stages of 1, 2, 8, 8 and 4 residual blocks.
- Neck: three convolutions, SPP (max pools 5, 9 and 13 beside the identity), then a PANet
  (top-down, then bottom-up) with leaky ReLU 0.1.
- Heads: a 3x3 convolution and a 1x1 convolution with bias and without BatchNorm, giving
  ``3 * (5 + num_classes)`` channels at strides 8, 16 and 32.

Every concatenation keeps darknet's ``[route]`` order, so the state has darknet's layout and
size: 64,429,405 float32 values at 80 classes, the payload of ``yolov4.weights``.
"""

from __future__ import annotations

import torch
from torch import nn

ANCHORS_PER_SCALE = 3


class ConvBNAct(nn.Module):
    """A darknet ``[convolutional]`` with ``batch_normalize=1``: conv without bias, BN, act.

    Darknet's ``pad=1`` means ``size // 2`` padding, so a 1x1 convolution is unpadded.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, act: str
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.Mish() if act == "mish" else nn.LeakyReLU(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ResBlock(nn.Module):
    """1x1 then 3x3 convolution with a linear ``[shortcut]`` around both."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = ConvBNAct(channels, hidden, 1, act="mish")
        self.conv2 = ConvBNAct(hidden, channels, 3, act="mish")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.conv1(x))


class CSPStage(nn.Module):
    """A CSPDarknet53 stage: downsample, split in two, residual blocks on one part, merge.

    The first stage (``first=True``) is the cfg's special case: both parts keep the full
    ``out_channels`` and its blocks narrow to half inside; the later stages split into halves.
    """

    def __init__(self, in_channels: int, out_channels: int, blocks: int, *, first: bool) -> None:
        super().__init__()
        part = out_channels if first else out_channels // 2
        hidden = out_channels // 2 if first else part
        self.down = ConvBNAct(in_channels, out_channels, 3, stride=2, act="mish")
        self.split_bypass = ConvBNAct(out_channels, part, 1, act="mish")
        self.split_main = ConvBNAct(out_channels, part, 1, act="mish")
        self.blocks = nn.Sequential(*(ResBlock(part, hidden) for _ in range(blocks)))
        self.post_blocks = ConvBNAct(part, part, 1, act="mish")
        self.transition = ConvBNAct(2 * part, out_channels, 1, act="mish")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        bypass = self.split_bypass(x)
        main = self.post_blocks(self.blocks(self.split_main(x)))
        return self.transition(torch.cat([main, bypass], dim=1))


class CSPDarknet53(nn.Module):
    """The backbone; returns the feature maps at strides 8, 16 and 32 (256, 512, 1024 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBNAct(3, 32, 3, act="mish")
        self.stage1 = CSPStage(32, 64, 1, first=True)
        self.stage2 = CSPStage(64, 128, 2, first=False)
        self.stage3 = CSPStage(128, 256, 8, first=False)
        self.stage4 = CSPStage(256, 512, 8, first=False)
        self.stage5 = CSPStage(512, 1024, 4, first=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.stage2(self.stage1(self.stem(x)))
        c3 = self.stage3(x)
        c4 = self.stage4(c3)
        c5 = self.stage5(c4)
        return c3, c4, c5


class SPP(nn.Module):
    """Spatial pyramid pooling: stride-1 max pools of 5, 9 and 13 concatenated with the input."""

    def __init__(self, sizes: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The cfg's route -1,-3,-5,-6 puts the largest pool first and the input last.
        return torch.cat([pool(x) for pool in reversed(self.pools)] + [x], dim=1)


def conv_stack(in_channels: int, channels: int, count: int) -> nn.Sequential:
    """Alternating 1x1 (``channels``) and 3x3 (``2 * channels``) leaky convolutions."""
    layers = []
    for i in range(count):
        wide = i % 2 == 1
        out = 2 * channels if wide else channels
        layers.append(ConvBNAct(in_channels, out, 3 if wide else 1, act="leaky"))
        in_channels = out
    return nn.Sequential(*layers)


class Neck(nn.Module):
    """SPP and the PANet: returns the fused maps at strides 8, 16 and 32 (128, 256, 512 ch)."""

    def __init__(self) -> None:
        super().__init__()
        self.pre_spp = conv_stack(1024, 512, 3)
        self.spp = SPP()
        self.post_spp = conv_stack(2048, 512, 3)
        # Top-down: reduce, upsample, concatenate with a reduced lateral from the backbone.
        self.reduce5 = ConvBNAct(512, 256, 1, act="leaky")
        self.lateral4 = ConvBNAct(512, 256, 1, act="leaky")
        self.fuse4 = conv_stack(512, 256, 5)
        self.reduce4 = ConvBNAct(256, 128, 1, act="leaky")
        self.lateral3 = ConvBNAct(256, 128, 1, act="leaky")
        self.fuse3 = conv_stack(256, 128, 5)
        # Bottom-up: strided 3x3 down, concatenate with the top-down map of that stride.
        self.down3 = ConvBNAct(128, 256, 3, stride=2, act="leaky")
        self.fuse4_out = conv_stack(512, 256, 5)
        self.down4 = ConvBNAct(256, 512, 3, stride=2, act="leaky")
        self.fuse5_out = conv_stack(1024, 512, 5)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")

    def forward(
        self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p5 = self.post_spp(self.spp(self.pre_spp(c5)))
        up = self.upsample(self.reduce5(p5))
        p4 = self.fuse4(torch.cat([self.lateral4(c4), up], dim=1))
        up = self.upsample(self.reduce4(p4))
        n3 = self.fuse3(torch.cat([self.lateral3(c3), up], dim=1))
        n4 = self.fuse4_out(torch.cat([self.down3(n3), p4], dim=1))
        n5 = self.fuse5_out(torch.cat([self.down4(n4), p5], dim=1))
        return n3, n4, n5


class YOLOHead(nn.Module):
    """A 3x3 leaky convolution then the raw 1x1 prediction convolution (bias, no BN)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = ConvBNAct(in_channels, 2 * in_channels, 3, act="leaky")
        self.pred = nn.Conv2d(2 * in_channels, ANCHORS_PER_SCALE * (5 + num_classes), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pred(self.conv(x))


class YOLOv4(nn.Module):
    """YOLOv4 (608x608 in the cfg; any multiple of 32 works).

    ``forward`` returns the three raw head outputs at strides 8, 16 and 32, each of shape
    ``(batch, 3 * (5 + num_classes), H / stride, W / stride)``; decoding and loss are left out.
    """

    def __init__(self, num_classes: int = 80) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.backbone = CSPDarknet53()
        self.neck = Neck()
        self.heads = nn.ModuleList(YOLOHead(c, num_classes) for c in (128, 256, 512))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.neck(*self.backbone(x))
        s8, s16, s32 = (head(f) for head, f in zip(self.heads, features, strict=True))
        return s8, s16, s32

    def training_loss(self, outputs: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        """Per-sample loss for image-level labels (ImageNet has classes, not boxes).

        The class scores of every anchor of all three heads are averaged into one score per
        class and trained with cross-entropy: a full forward and backward pass through the
        whole detector, which is what timing needs, without inventing boxes.
        """
        c = self.num_classes
        pooled = sum(
            o.view(o.shape[0], 3, 5 + c, -1)[:, :, 5:, :].mean(dim=(1, 3)) for o in outputs
        )
        return nn.functional.cross_entropy(pooled, y % c, reduction="none")
