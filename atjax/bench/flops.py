"""Analytic FLOP counts of the training step (multiply-adds x 2).

XLA's cost analysis was seen to report 0.14 and 1.92 TFLOP for a step that really costs
about 12.86 (PyTorch's FLOP counter on the reference), so the benchmark counts the model
itself and reports XLA's figure only as a cross-check.

Training cost = forward + backward, where the backward of a linear map costs twice its
forward (input and weight gradients): 3x the forward MACs for every trained layer. The
STFT/mel constants are not trained and their input needs no gradient: 1x.
"""

from __future__ import annotations

from atjax.encoders import panns
from atjax.encoders import text as text_lib


def resnet_forward_macs(config: panns.ResNetConfig, num_samples: int, *,
                        stft_as_matmul: bool = True) -> dict[str, float]:
    fe = config.frontend
    frames = 1 + num_samples // fe.hop_length
    bins = fe.n_fft // 2 + 1
    frontend = frames * bins * fe.n_mels
    if stft_as_matmul:
        frontend += frames * fe.n_fft * bins * 2  # real and imaginary DFT rows
    h, w = frames, fe.n_mels
    net = 0.0
    c = config.stem_width
    net += h * w * 9 * (1 * c + c * c)            # conv_block1: two 3x3 convs
    h, w = h // 2, w // 2
    cin = c
    for stage, (blocks, cout) in enumerate(zip(config.blocks, config.widths)):
        for b in range(blocks):
            if b == 0 and stage > 0:
                h, w = h // 2, w // 2             # avg-pool 2x2 before a stride-2 block
            net += h * w * 9 * (cin * cout + cout * cout)
            if b == 0 and (stage > 0 or cin != cout):
                net += h * w * cin * cout         # 1x1 shortcut
            cin = cout
    h, w = h // 2, w // 2
    e = config.embed_dim
    net += h * w * 9 * (cin * e + e * e)          # conv_block_after1
    net += e * e + e * config.num_classes         # fc1, fc_audioset
    return {"frontend": float(frontend), "network": float(net)}


def text_forward_macs(config: text_lib.TextEncoderConfig, length: int) -> float:
    d, f = config.hidden_size, config.intermediate_size
    per_layer = length * (4 * d * d + 2 * d * f) + 2 * length * length * d
    return float(config.num_layers * per_layer)


def train_step_flops(model_config, batch_size: int, num_samples: int, text_length: int,
                     *, stft_as_matmul: bool = True) -> dict[str, float]:
    """FLOPs of one training step of the dual encoder (heads and loss included)."""
    from atjax import model as model_lib

    audio_cfg = model_lib.audio_config(model_config)
    text_cfg = model_lib.text_config(model_config)
    chunk = model_lib.chunk_samples(model_config)
    if chunk:
        pieces, per = num_samples // chunk, chunk
    else:
        pieces, per = 1, num_samples
    audio = resnet_forward_macs(audio_cfg, per, stft_as_matmul=stft_as_matmul)
    audio_frontend = audio["frontend"] * pieces * batch_size
    audio_net = audio["network"] * pieces * batch_size
    text = text_forward_macs(text_cfg, text_length) * batch_size
    e = model_config.embed_dim
    if model_config.head == "mlp":
        heads = batch_size * (audio_cfg.embed_dim * e + e * e + text_cfg.hidden_size * e + e * e)
    else:
        def tf_head(in_dim, length):
            per_layer = (length + 1) * (4 * e * e + 2 * e * 2 * e) + 2 * (length + 1) ** 2 * e
            return length * in_dim * e + 2 * per_layer
        heads = batch_size * (tf_head(audio_cfg.embed_dim, pieces)
                              + tf_head(text_cfg.hidden_size, text_length))
    loss = batch_size * batch_size * e
    trained = audio_net + text + heads + loss
    flops = 2 * (3 * trained + audio_frontend)
    return {"total": flops, "audio": 2 * (3 * audio_net + audio_frontend),
            "text": 2 * 3 * text, "heads_and_loss": 2 * 3 * (heads + loss)}
