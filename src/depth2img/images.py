"""Image pre- and post-processing for the pipeline: PIL / numpy / torch in, a normalised tensor out, and back.

Accepted inputs, as diffusers' ``VaeImageProcessor`` accepts them:
- ``PIL.Image.Image`` (any mode; converted to RGB by :func:`to_rgb`: 16-bit grayscale by its 0..65535 range),
- numpy ``(H, W, C)`` or ``(B, H, W, C)`` (or ``(H, W)`` grayscale), float in [0, 1] or uint8 in [0, 255],
- torch ``(C, H, W)`` or ``(B, C, H, W)``, float in [0, 1] or [-1, 1] (a tensor with a negative value is taken to
  be in [-1, 1], as the reference does); a 4-channel tensor is already VAE latents and is passed through,
- or a list of any one of those kinds.

Float pixels must be finite and within [-1, 1] (0..255 floats are refused, not clipped): see
:func:`check_image_values`, run before any model. Pixels are resized down to a multiple of the VAE scale factor
(Lanczos for PIL, nearest for arrays — the reference's choices, so seeded outputs stay equal) and normalised to
[-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch

__all__ = [
    "LATENT_CHANNELS",
    "OUTPUT_TYPES",
    "ImageBatch",
    "ImageInput",
    "describe_images",
    "images_to_tensor",
    "numpy_to_pil",
    "MAX_PIXELS",
    "check_image_values",
    "check_pixel_count",
    "postprocess",
    "to_rgb",
    "to_uint8_images",
]

ImageInput = PIL.Image.Image | np.ndarray | torch.Tensor | list
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
LATENT_CHANNELS = 4  # a torch image with this many channels is taken to be VAE latents
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")  # PIL's 16-bit grayscale modes (16-bit PNG, TIFF)
FLOAT_TOLERANCE = 1e-3  # float pixels may overshoot [-1, 1] by rounding this much (e.g. after a resize)
# The largest image (width x height) accepted, from a file or in memory: 8192x8192. Larger ones are refused before
# anything is decoded (a small file can declare a huge size: a decompression bomb). Set it to change the default;
# the command line's --max-pixels overrides it per run.
MAX_PIXELS = 8192 * 8192


@dataclass(frozen=True)
class ImageBatch:
    """What the pipeline needs to know about its ``image`` argument before running any model."""

    items: list  # one entry per image: PIL image, (H, W[, C]) array, or (C, H, W) tensor
    kind: str  # "pil" | "numpy" | "torch"
    height: int
    width: int
    channels: int

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def is_latents(self) -> bool:
        return self.kind == "torch" and self.channels == LATENT_CHANNELS


def _split_batch(image: ImageInput) -> tuple[list, str]:
    """One list entry per image, and the common kind; raises for unsupported or mixed types."""
    if isinstance(image, PIL.Image.Image):
        return [image], "pil"
    if isinstance(image, (np.ndarray, torch.Tensor)):
        kind = "numpy" if isinstance(image, np.ndarray) else "torch"
        if image.ndim == 4:
            return list(image), kind
        if image.ndim in (2, 3):
            return [image], kind
        raise ValueError(
            f"image must be a 2-D, 3-D or 4-D array or tensor, got {image.ndim} dimensions (shape {tuple(image.shape)})"
        )
    if isinstance(image, (list, tuple)):
        if len(image) == 0:
            raise ValueError("image is an empty list; pass at least one image")
        items, kinds = [], set()
        for entry in image:
            if isinstance(entry, (list, tuple)) or entry is None:
                raise TypeError(f"image lists must hold PIL images, numpy arrays or torch tensors, got {entry!r:.60}")
            entries, kind = _split_batch(entry)
            items.extend(entries)
            kinds.add(kind)
        if len(kinds) > 1:
            raise TypeError(f"image list mixes {' and '.join(sorted(kinds))} images; use one kind for the whole batch")
        return items, kinds.pop()
    raise TypeError(
        f"image must be a PIL image, a numpy array, a torch tensor or a list of them, got {type(image).__name__}"
    )


def _size_and_channels(item, kind: str) -> tuple[int, int, int]:
    if kind == "pil":
        return item.height, item.width, 3
    if kind == "numpy":  # (H, W) or (H, W, C)
        return item.shape[0], item.shape[1], item.shape[2] if item.ndim == 3 else 1
    if item.ndim == 2:  # torch (H, W)
        return item.shape[0], item.shape[1], 1
    return item.shape[1], item.shape[2], item.shape[0]  # torch (C, H, W)


def describe_images(image: ImageInput) -> ImageBatch:
    """Validate ``image`` (type, layout, one size for the whole batch) without converting any pixels."""
    if image is None:
        raise ValueError("image is required: pass a PIL image, numpy array, torch tensor or a list of them")
    items, kind = _split_batch(image)
    sizes = {_size_and_channels(item, kind) for item in items}
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}x{c}" for h, w, c in sorted(sizes))
        raise ValueError(f"all images of a batch must have the same size and channels, got {shown} (HxWxC)")
    height, width, channels = sizes.pop()
    allowed = (1, 3, LATENT_CHANNELS) if kind == "torch" else (1, 3)
    if channels not in allowed:
        layout = "(C, H, W)" if kind == "torch" else "(H, W, C)"
        raise ValueError(
            f"{kind} images must have {', '.join(map(str, allowed))} channels in {layout} layout, got {channels} "
            f"(image shape {tuple(items[0].shape)})"
        )
    return ImageBatch(items=items, kind=kind, height=height, width=width, channels=channels)


def _is_signed_range(batch: ImageBatch) -> bool:
    """The reference's rule for float tensors: a negative value anywhere means the batch is in [-1, 1]."""
    return any(bool((item < 0).any()) for item in batch.items)


def _floor_to_multiple(height: int, width: int, multiple: int) -> tuple[int, int]:
    return height - height % multiple, width - width % multiple


def images_to_tensor(batch: ImageBatch, multiple: int) -> torch.Tensor:
    """The batch as a (B, C, H, W) tensor in [-1, 1] sized to a multiple of ``multiple`` (latents pass through).

    Numerically identical to diffusers' ``VaeImageProcessor.preprocess`` for the inputs it supports.
    """
    height, width = _floor_to_multiple(batch.height, batch.width, multiple)
    if batch.kind == "pil":
        resample = PIL.Image.Resampling.LANCZOS
        arrays = [np.array(to_rgb(item).resize((width, height), resample=resample)) for item in batch.items]
        pixels = torch.from_numpy((np.stack(arrays).astype(np.float32) / 255.0).transpose(0, 3, 1, 2))
        return 2.0 * pixels - 1.0
    if batch.kind == "numpy":
        arrays = [item if item.ndim == 3 else item[..., None] for item in batch.items]
        stacked = np.stack(arrays)
        if stacked.dtype == np.uint8:
            stacked = stacked.astype(np.float32) / 255.0
        pixels = torch.from_numpy(stacked.transpose(0, 3, 1, 2))
    else:
        pixels = torch.stack([item if item.ndim == 3 else item[None] for item in batch.items])
        if batch.is_latents:
            return pixels
        if pixels.dtype == torch.uint8:
            pixels = pixels.float() / 255.0
    if pixels.shape[1] == 1:  # grayscale: the VAE wants RGB
        pixels = pixels.repeat(1, 3, 1, 1)
    if (height, width) != (batch.height, batch.width):
        pixels = torch.nn.functional.interpolate(pixels, size=(height, width))  # nearest, as the reference
    if pixels.min() < 0:  # already in [-1, 1]
        return pixels
    return 2.0 * pixels - 1.0


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """``image`` as 8-bit RGB, scaling high-bit-depth grayscale by its real range rather than clipping it.

    PIL's own ``convert("RGB")`` clips 16-bit values at 255, which turns a 16-bit PNG all white. Here 16-bit
    modes (``I;16*``) map 0..65535 to 0..255; a 32-bit ``I`` image (what some Pillow versions make of a 16-bit
    PNG) must hold 0..65535 and is read the same way; a float ``F`` image must hold [0, 1]. Anything else raises
    ``ValueError`` naming the range found. Every other mode goes through PIL's conversion.
    """
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        scale = 1.0 if image.mode == "F" else 65535.0
        if not np.isfinite(values).all() or low < 0 or high > scale:
            kind = "a float (mode F) image" if image.mode == "F" else f"a {image.mode} image"
            allowed = "[0, 1]" if image.mode == "F" else "0..65535"
            raise ValueError(
                f"{kind} must hold values in {allowed}, got values from {low:g} to {high:g}; save it as an 8- or "
                "16-bit image"
            )
        gray = np.round(values / scale * 255.0).astype(np.uint8)
        return PIL.Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
    return image.convert("RGB")


def check_pixel_count(width: int, height: int, what: str, limit: int | None = None) -> None:
    """Refuse an image of ``width`` x ``height`` above ``limit`` pixels (default: the module's ``MAX_PIXELS``);
    ``what`` names it (a file, or "image") in the sentence."""
    limit = MAX_PIXELS if limit is None else limit
    if width * height > limit:
        raise ValueError(
            f"{what} is {width}x{height} = {width * height:,} pixels, more than the limit of {limit:,} "
            "(depth2img.images.MAX_PIXELS, or --max-pixels on the command line); resize it, or raise the limit"
        )


def check_image_values(batch: ImageBatch) -> None:
    """Numpy and torch pixels must be uint8, or floats that are finite and in [0, 1] (or [-1, 1]); latents
    must be finite. Raises one sentence naming what was found; PIL images are always valid."""
    check_pixel_count(batch.width, batch.height, "image")
    if batch.kind == "pil":
        for item in batch.items:
            if item.mode in SIXTEEN_BIT_MODES or item.mode in ("I", "F"):
                to_rgb(item)  # raises for values outside the mode's range
        return
    for item in batch.items:
        is_torch = isinstance(item, torch.Tensor)
        is_float = item.is_floating_point() if is_torch else np.issubdtype(item.dtype, np.floating)
        is_uint8 = item.dtype == (torch.uint8 if is_torch else np.uint8)
        if not (is_float or is_uint8) or (batch.is_latents and not is_float):
            allowed = "floating point" if batch.is_latents else "uint8 (0..255) or floating point (0..1)"
            raise TypeError(f"{batch.kind} images must be {allowed}, got dtype {item.dtype}")
        if not is_float or (item.numel() if is_torch else item.size) == 0:
            continue
        values = item.detach().float() if is_torch else item
        finite = bool(torch.isfinite(values).all()) if is_torch else bool(np.isfinite(values).all())
        if not finite:
            what = "latents" if batch.is_latents else "image"
            raise ValueError(f"the {batch.kind} {what} contains NaN or infinite values")
        if batch.is_latents:
            continue
        low, high = float(values.min()), float(values.max())
        if low < -1 - FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
            raise ValueError(
                f"float {batch.kind} images must hold values in [0, 1] (or [-1, 1]), got values from {low:g} to "
                f"{high:g}; for 0..255 pixels pass a uint8 array, or divide by 255"
            )


def to_uint8_images(batch: ImageBatch) -> list[np.ndarray]:
    """Each image as an (H, W, 3) uint8 array at its original size: what the depth estimator's preprocessing
    (PIL resize, rescale, normalise) starts from, whatever the input kind.

    Floats in [0, 1] (or [-1, 1] tensors) are rounded to the nearest of 256 levels, so a float image and the same
    picture as a PIL image give the same depth.
    """
    if batch.kind == "pil":
        return [np.array(to_rgb(item)) for item in batch.items]
    signed = batch.kind == "torch" and _is_signed_range(batch)
    out = []
    for item in batch.items:
        if batch.kind == "torch":
            item = item.detach().cpu()
            item = item.permute(1, 2, 0) if item.ndim == 3 else item
            item = item.float().numpy() if item.dtype != torch.uint8 else item.numpy()
        if item.ndim == 2:
            item = item[..., None]
        if item.dtype != np.uint8:
            values = (item.astype(np.float32) + 1.0) / 2.0 if signed else item
            item = np.clip(np.round(values * 255.0), 0, 255).astype(np.uint8)
        if item.shape[-1] == 1:
            item = np.repeat(item, 3, axis=-1)
        out.append(np.ascontiguousarray(item))
    return out


def numpy_to_pil(images: np.ndarray) -> list[PIL.Image.Image]:
    """(B, H, W, C) floats in [0, 1] → PIL images (mode "L" for one channel)."""
    if images.ndim == 3:
        images = images[None]
    images = (images * 255).round().astype("uint8")
    if images.shape[-1] == 1:
        return [PIL.Image.fromarray(image[..., 0], mode="L") for image in images]
    return [PIL.Image.fromarray(image) for image in images]


def postprocess(images: torch.Tensor, output_type: str = "pil"):
    """Decoded (B, C, H, W) images in [-1, 1] → ``output_type``: "pt" (tensor in [0, 1]), "np" ((B, H, W, C)
    float32 array), "pil" (list of PIL images); "latent" returns ``images`` unchanged."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type={output_type!r} is not supported; choose one of {', '.join(OUTPUT_TYPES)}")
    if output_type == "latent":
        return images
    images = (images * 0.5 + 0.5).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return array if output_type == "np" else numpy_to_pil(array)
