"""Tiny variants of every backbone family (reduced depth/width through model_args) for fast CPU tests."""

FAMILIES: dict[str, tuple[str, dict]] = {
    "convnext": ("convnext_atto", {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}),
    "gresnet": ("gresnet_tiny", {}),  # medconv.models.gresnet, registered with timm on import
    "resnet": ("resnet50d", {"layers": [1, 1, 1, 1], "channels": [8, 16, 24, 32], "stem_width": 8}),
    "swin": ("swin_tiny_patch4_window7_224", {"depths": [1, 1, 2, 1], "embed_dim": 32, "num_heads": [1, 2, 2, 4]}),
    "swinv2": ("swinv2_tiny_window8_256", {"depths": [1, 1, 2, 1], "embed_dim": 32, "num_heads": [1, 2, 2, 4]}),
    "pvt_v2": ("pvt_v2_b0", {"depths": [1, 1, 1, 1], "embed_dims": [16, 32, 48, 64], "num_heads": [1, 1, 2, 2]}),
    "hiera": ("hiera_tiny_224", {"stages": [1, 1, 1, 1], "embed_dim": 32, "num_heads": 1}),
    "vit": ("vit_tiny_patch16_224", {"depth": 2, "embed_dim": 64, "num_heads": 2}),
}
VIT_FAMILIES = ["swin", "swinv2", "pvt_v2", "hiera", "vit"]
