"""depth2img: text-guided, depth-preserving image-to-image generation with Stable Diffusion 2 depth."""

__version__ = "0.1.0"
