"""The named preset architectures (the paper gives none for MNIST/SVHN/CIFAR: these are ours).

Each dataset's registry entry names the preset it uses. Parameter counts are printed by
``python -m swwae_lightning.presets`` and quoted in the README.
"""

from __future__ import annotations

PRESETS: dict[str, str] = {
    # 28x28x1: two what-where stages, small enough that the default job runs on a laptop CPU.
    "mnist": "16C5-BN-MP2-32C3-MP2-FC128-D0.3",
    # 32x32x3: a VGG-style stack, three what-where stages.
    "cifar": "64C3-64C3-BN-MP2-128C3-128C3-MP2-256C3-256C3-MP2-FC512-D0.5",
    # 96x96x3: the STL-10 network of a public SWWAE re-implementation (docs/model.md), with BN.
    "stl10": "(64)3c-4p-(64)3c-3p-(128)3c-(128)3c-2p-(256)3c-(256)3c-(256)3c-(512)3c-(512)3c-(512)3c-2p-BN-D0.5",
}

if __name__ == "__main__":
    from .network import StackedWhatWhere

    shapes = {"mnist": (1, 28), "cifar": (3, 32), "stl10": (3, 96)}
    for name, arch in PRESETS.items():
        channels, size = shapes[name]
        net = StackedWhatWhere(arch, channels, size, 10)
        encoder = sum(p.numel() for s in net.stages for p in s.encoder.parameters()) + sum(
            p.numel() for p in net.head.parameters()
        )
        total = sum(p.numel() for p in net.parameters())
        print(f"| {name} | {channels}x{size}x{size} | `{arch}` | {encoder:,} | {total:,} |")
