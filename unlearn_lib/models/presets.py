"""Model presets: a CPU-sized one for digits and the DDPM CIFAR-10 architecture for GPUs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    sample_size: int
    channels: int
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    down_block_types: tuple[str, ...]
    up_block_types: tuple[str, ...]
    norm_num_groups: int = 32
    dropout: float = 0.0
    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    # Training defaults that reach recognisable samples for this preset.
    train_defaults: dict = field(default_factory=dict)

    def unet_kwargs(self, num_class_embeds: int | None) -> dict:
        return {
            "sample_size": self.sample_size,
            "in_channels": self.channels,
            "out_channels": self.channels,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "down_block_types": self.down_block_types,
            "up_block_types": self.up_block_types,
            "norm_num_groups": self.norm_num_groups,
            "dropout": self.dropout,
            "num_class_embeds": num_class_embeds,
        }

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "digits": Preset(
        name="digits",
        description="0.7M-parameter UNet for 8x8 greyscale digits; trains in minutes on 2 CPU cores",
        sample_size=8,
        channels=1,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        train_defaults={"steps": 2000, "batch_size": 64, "lr": 2e-3},
    ),
    "cifar10-ddpm": Preset(
        name="cifar10-ddpm",
        description="the DDPM CIFAR-10 architecture (35.7M parameters, attention at 16x16) for GPUs",
        sample_size=32,
        channels=3,
        block_out_channels=(128, 256, 256, 256),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32,
        dropout=0.1,
        train_defaults={"steps": 800_000, "batch_size": 128, "lr": 2e-4},
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})") from None
