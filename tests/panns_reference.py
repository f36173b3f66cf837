"""PANNs' ResNet family in PyTorch, written from the documented architecture, for parity tests.

Written from the facts in shared/design/panns_resnet38.md (not from PANNs' code); the
state-dict keys are those of the released checkpoints, so `torch.save({"model":
model.state_dict()}, path)` produces a file laid out like ResNet38_mAP=0.434.pth. The
frontend is torchlibrosa's, as in PANNs. SpecAugment is left out: it is random, so parity
is only ever checked with it off.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchlibrosa.stft import LogmelFilterBank, Spectrogram


def _conv(cin, cout, size):
    return nn.Conv2d(cin, cout, kernel_size=size, padding=size // 2, bias=False)


class _Block(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 at 4x width) residual block."""

    def __init__(self, cin, width, stride, bottleneck, dropout):
        super().__init__()
        self.stride, self.bottleneck, self.p = stride, bottleneck, dropout
        cout = width * 4 if bottleneck else width
        if bottleneck:
            self.conv1, self.bn1 = _conv(cin, width, 1), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = _conv(width, width, 3), nn.BatchNorm2d(width)
            self.conv3, self.bn3 = _conv(width, cout, 1), nn.BatchNorm2d(cout)
        else:
            self.conv1, self.bn1 = _conv(cin, width, 3), nn.BatchNorm2d(width)
            self.conv2, self.bn2 = _conv(width, width, 3), nn.BatchNorm2d(width)
        self.downsample = None
        if stride == 2:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(2), _conv(cin, cout, 1), nn.BatchNorm2d(cout))
        elif cin != cout:
            self.downsample = nn.Sequential(_conv(cin, cout, 1), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.avg_pool2d(x, 2) if self.stride == 2 else x
        if self.bottleneck:
            y = F.relu(self.bn1(self.conv1(y)))
            y = F.dropout(F.relu(self.bn2(self.conv2(y))), self.p, self.training)
            y = self.bn3(self.conv3(y))
        else:
            y = F.dropout(F.relu(self.bn1(self.conv1(y))), self.p, self.training)
            y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(y + shortcut)


class _ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.conv2 = _conv(cin, cout, 3), _conv(cout, cout, 3)
        self.bn1, self.bn2 = nn.BatchNorm2d(cout), nn.BatchNorm2d(cout)

    def forward(self, x, pool):
        x = F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))
        return F.avg_pool2d(x, 2) if pool else x


class TorchResNet(nn.Module):
    """PANNs ResNet (NCHW, H = time, W = mel). Defaults: ResNet38."""

    def __init__(self, blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), block="basic",
                 stem_width=64, embed_dim=2048, num_classes=527, sample_rate=32000,
                 n_fft=1024, hop_length=320, n_mels=64, fmin=50.0, fmax=14000.0,
                 feature_dropout=0.2, block_dropout=0.1, pooled_dropout=0.5,
                 embedding_dropout=0.5):
        super().__init__()
        self.spectrogram_extractor = Spectrogram(
            n_fft=n_fft, hop_length=hop_length, win_length=n_fft, window="hann", center=True,
            pad_mode="reflect", freeze_parameters=True)
        self.logmel_extractor = LogmelFilterBank(
            sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax, ref=1.0,
            amin=1e-10, top_db=None, freeze_parameters=True)
        self.bn0 = nn.BatchNorm2d(n_mels)
        self.conv_block1 = _ConvBlock(1, stem_width)
        bottleneck = block == "bottleneck"
        layers, cin = {}, stem_width
        for s, (count, width) in enumerate(zip(blocks, widths)):
            stage = []
            for i in range(count):
                stage.append(_Block(cin, width, 2 if s > 0 and i == 0 else 1, bottleneck,
                                    block_dropout))
                cin = width * 4 if bottleneck else width
            layers[f"layer{s + 1}"] = nn.Sequential(*stage)
        self.resnet = nn.ModuleDict(layers)
        self.conv_block_after1 = _ConvBlock(cin, embed_dim)
        self.fc1 = nn.Linear(embed_dim, embed_dim)
        self.fc_audioset = nn.Linear(embed_dim, num_classes)
        self.p_feature, self.p_pooled, self.p_embedding = (
            feature_dropout, pooled_dropout, embedding_dropout)

    def forward(self, waveform):
        x = self.logmel_extractor(self.spectrogram_extractor(waveform))  # (B, 1, T, mels)
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        x = F.dropout(self.conv_block1(x, pool=True), self.p_feature, self.training)
        for stage in self.resnet.values():
            x = stage(x)
        x = F.dropout(F.avg_pool2d(x, 2), self.p_feature, self.training)
        x = F.dropout(self.conv_block_after1(x, pool=False), self.p_feature, self.training)
        x = x.mean(dim=3)
        x = x.max(dim=2).values + x.mean(dim=2)
        x = F.relu(self.fc1(F.dropout(x, self.p_pooled, self.training)))
        return {"embedding": F.dropout(x, self.p_embedding, self.training),
                "clipwise_output": torch.sigmoid(self.fc_audioset(x))}


def randomize(model: TorchResNet, seed: int = 0) -> TorchResNet:
    """Xavier weights and non-trivial BatchNorm affine parameters and statistics.

    Every BatchNorm gets scales away from 1 (the residual blocks' last scale too, which
    PANNs initialises to 0) and running means/variances away from 0/1, so that a wrong
    mapping of any tensor shows in the output. bn0 gets statistics on the log-mel's dB scale.
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=g)

    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not name.startswith("spectrogram"):
                fan_in = module.weight[0].numel()
                fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
                bound = float(np.sqrt(6.0 / (fan_in + fan_out)))
                module.weight.copy_(uniform(module.weight.shape, -bound, bound))
                if module.bias is not None:
                    module.bias.copy_(uniform(module.bias.shape, -0.1, 0.1))
            elif isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(uniform(n, 0.5, 1.5))
                module.bias.copy_(uniform(n, -0.2, 0.2))
                if name == "bn0":
                    module.running_mean.copy_(uniform(n, -40.0, -10.0))
                    module.running_var.copy_(uniform(n, 50.0, 200.0))
                else:
                    module.running_mean.copy_(uniform(n, -0.3, 0.3))
                    module.running_var.copy_(uniform(n, 0.5, 2.0))
                module.num_batches_tracked.fill_(int(torch.randint(1, 10**6, (), generator=g)))
    return model


def state_dict_numpy(model: TorchResNet) -> dict[str, np.ndarray]:
    return {key: value.detach().cpu().numpy() for key, value in model.state_dict().items()}


def run(model: TorchResNet, waveform: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(torch.from_numpy(np.asarray(waveform, np.float32)))
    return {key: value.numpy() for key, value in out.items()}
