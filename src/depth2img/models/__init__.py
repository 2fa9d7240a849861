"""Our own UNet and VAE, with the published checkpoints' parameter names (weights load unchanged)."""

from .attention import Attention, AttentionBackendMixin
from .blocks import use_reference_arithmetic
from .modeling import ModelMixin
from .taesd import AutoencoderTiny, AutoencoderTinyOutput
from .unet import UNet2DConditionModel, UNet2DConditionOutput
from .vae import AutoencoderKL, AutoencoderKLOutput, DecoderOutput, DiagonalGaussianDistribution

__all__ = [
    "Attention",
    "AttentionBackendMixin",
    "AutoencoderKL",
    "AutoencoderKLOutput",
    "AutoencoderTiny",
    "AutoencoderTinyOutput",
    "DecoderOutput",
    "DiagonalGaussianDistribution",
    "ModelMixin",
    "UNet2DConditionModel",
    "UNet2DConditionOutput",
    "use_reference_arithmetic",
]
