"""Small networks of real architectures shared by the tests (random weights, built in milliseconds)."""

import torch


def tiny_lite(seed: int = 0) -> torch.nn.Module:
    """EfficientNet-Lite's architecture (static same padding: convolutions with a padding child, ReLU6, MBConv
    residuals) shrunk to a few blocks, 5 classes, in eval mode; default batch-norm statistics."""
    from efficientnet_lite_pytorch import EfficientNet
    from efficientnet_lite_pytorch.utils import BlockDecoder, GlobalParams

    torch.manual_seed(seed)
    blocks = BlockDecoder.decode(["r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24"])
    params = GlobalParams(
        width_coefficient=0.25,
        depth_coefficient=1.0,
        image_size=16,
        dropout_rate=0.0,
        num_classes=5,
        batch_norm_momentum=0.99,
        batch_norm_epsilon=1e-3,
        drop_connect_rate=0.0,
        depth_divisor=8,
        min_depth=None,
        relu_fn="relu6",
        fix_head_stem=True,
        local_pooling=False,
        use_se=False,
    )
    return EfficientNet(blocks, params).eval()
