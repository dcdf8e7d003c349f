"""Reading, converting and writing images, with clear errors for anything unusable.

``load_image`` accepts a path, raw bytes or a binary file object and always returns an RGB
``PIL.Image`` with its EXIF orientation applied, in sRGB (an embedded colour profile other than sRGB,
such as a phone's Display P3, is converted from).  Grayscale, palette, RGBA/LA (composited on
white), CMYK and 16-bit images are converted; decompression bombs, non-images, truncated files and
images below ``min_size`` are refused with an :class:`ImageError`.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import torch
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from artopt.file_writes import replace_file

ImageSource = Union[str, os.PathLike, bytes, bytearray, BinaryIO]

# Decoded-size guard: 64 megapixels is far beyond any output size we produce (a 2048 px
# stylization uses at most 4.2 MP) while still admitting large camera photos.
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MIN_SIZE = 32

SAVE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


class ImageError(ValueError):
    """An input image cannot be used (its message is meant for the user)."""


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    return getattr(source, "name", None) or "the image"


# Formats Pillow would hand to another program to decode: an EPS goes to Ghostscript where it is
# installed, which a web server must not run on an upload.  Refused as not an image.
EXTERNAL_DECODER_FORMATS = frozenset({"EPS"})


def _readable_formats() -> list[str]:
    Image.init()  # (registers every plugin: Image.OPEN is filled lazily)
    return [name for name in Image.OPEN if name not in EXTERNAL_DECODER_FORMATS]


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_size: int = DEFAULT_MIN_SIZE) -> Image.Image:
    """Decode ``source`` into an RGB image with EXIF orientation applied.

    Raises ImageError for missing files, non-images, truncated data, images with more than
    ``max_pixels`` pixels and images whose shorter side is below ``min_size``.
    """
    label = _describe(source)
    if not isinstance(source, (str, os.PathLike, bytes, bytearray)) and not hasattr(source, "read"):
        raise TypeError(f"load_image takes a path, bytes or a binary file object, got {type(source).__name__}")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        if not os.fspath(source).strip():  # (Path("") is the current folder: "is a folder, not an image")
            raise ImageError("an empty file name was given for an image")
        path = source = Path(source)
        if not path.exists():
            raise ImageError(f"{label}: file not found")
        if path.is_dir():
            raise ImageError(f"{label}: is a folder, not an image")
    opened = None
    if isinstance(source, Path):
        # Opened here and closed below: for a multi-frame file (GIF, MPO) Pillow would keep its own
        # handle open until garbage collection (a ResourceWarning, one descriptor per image meanwhile).
        try:
            source = opened = open(source, "rb")
        except OSError as exc:
            raise ImageError(f"{label}: cannot read ({exc.strerror or exc})") from None
    try:
        try:
            with warnings.catch_warnings():
                # Pillow warns (rather than raises) between 1x and 2x its limit; make both an error.
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(source, formats=_readable_formats())
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(f"{label}: {width}x{height} is too large "
                                     f"({width * height / 1e6:.0f} megapixels; the limit is {max_pixels / 1e6:.0f})")
                image.load()  # decode now so that truncated data fails here
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            # Pillow refuses from the header alone, before the size check above could state the limit.
            over, limit = Image.MAX_IMAGE_PIXELS / 1e6, min(max_pixels, Image.MAX_IMAGE_PIXELS) / 1e6
            raise ImageError(f"{label}: too large (over {over:.3g} megapixels, refused before decoding as a possible "
                             f"decompression bomb; the limit is {limit:.3g})") from None
        except UnidentifiedImageError:
            raise ImageError(f"{label}: not an image file (or a format artopt cannot read)") from None
        except OSError as exc:
            raise ImageError(f"{label}: damaged or truncated image ({exc})") from None
        except Exception as exc:  # any other decoder failure is still the file's fault
            raise ImageError(f"{label}: cannot decode image ({exc})") from None
        sixteen_bit = image.format in SIXTEEN_BIT_I_FORMATS  # (the transpose below drops .format)
        image = _apply_exif_orientation(image)
        image = to_srgb(image)
        image = to_rgb(image, sixteen_bit=sixteen_bit)
    finally:
        if opened is not None:
            opened.close()
    check_min_size(image, min_size, label)
    return image


def check_min_size(image: Image.Image, min_size: int, label: str = "the image") -> None:
    """Refuse an image whose shorter side is below ``min_size`` (``load_image`` does this as it loads)."""
    if min(image.size) < min_size:
        raise ImageError(f"{label}: {image.width}x{image.height} is too small "
                         f"(the shorter side must be at least {min_size} px)")


_ORIENTATION_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


def _apply_exif_orientation(image: Image.Image) -> Image.Image:
    """``ImageOps.exif_transpose``, tolerating damaged EXIF data (a photo stays usable)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # e.g. struct.error while Pillow re-encodes a corrupt EXIF block
        pass
    try:
        method = _ORIENTATION_TRANSPOSE.get(image.getexif().get(0x0112))
    except Exception:
        return image
    return image.transpose(method) if method is not None else image


# Formats whose 32-bit integer ("I") images hold 16-bit samples on 0-65535: Pillow scales a PGM's
# maxval to 65535, and a PNG has no deeper grey.  Elsewhere the range is guessed from the values.
SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")


# The modes whose embedded profile is converted, and the colour space that profile must describe.
PROFILE_SPACES = {"RGB": "RGB", "RGBA": "RGB", "CMYK": "CMYK"}
# Colours an RGB profile's transform is tried on first: where none moves, the profile is sRGB's (or as
# good as), and the image is left as it is, at no cost.
_PROBE = np.array([[(r, g, b) for r in range(0, 256, 51) for g in range(0, 256, 51) for b in range(0, 256, 51)]
                   + [(v, v, v) for v in range(256)]], dtype=np.uint8)


def to_srgb(image: Image.Image) -> Image.Image:
    """``image`` converted from its embedded ICC profile to sRGB, as a viewer shows it (a CMYK image
    becomes RGB; a palette image, or one with a colour key, RGBA).  The loss network and every output
    assume sRGB: without this a Display P3 photo came out duller and a linear-light one far too dark.
    Unchanged where there is no profile, where the profile's transform moves no colour (sRGB's), and
    where it does not fit the mode (a grey profile, 16-bit samples) or cannot be read (the pixels as
    they are, as most viewers show them)."""
    icc = image.info.get("icc_profile")
    if not icc:
        return image
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        space = (profile.profile.xcolor_space or "").strip()
        if space == "RGB" and (image.mode in ("P", "PA") or (image.mode == "RGB" and "transparency" in image.info)):
            image = image.convert("RGBA")  # (the palette's or the key's transparency as alpha, converted below)
            image.info.pop("transparency", None)
        if PROFILE_SPACES.get(image.mode) != space:
            return image
        srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        if space == "RGB":
            probe = Image.fromarray(_PROBE, mode="RGB")
            moved = np.asarray(ImageCms.profileToProfile(probe, profile, srgb), dtype=np.int16) - _PROBE
            if not moved.any():
                return image
        converted = ImageCms.profileToProfile(image, profile, srgb, outputMode="RGBA" if image.mode == "RGBA" else "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError, AttributeError):
        return image
    converted.info = {k: v for k, v in image.info.items() if k != "icc_profile"}
    return converted


def to_rgb(image: Image.Image, sixteen_bit: bool = False) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited on white.  ``sixteen_bit``: an
    "I" image's samples are 16-bit (``SIXTEEN_BIT_I_FORMATS``), so a dark one stays dark."""
    if image.mode == "RGB" and "transparency" not in image.info:
        return image
    if image.mode == "1":
        image = image.convert("L")  # keeps a colour key (0 or 255), handled with L's below
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit and float grayscale: Pillow's convert("L") clips instead of scaling, so scale by hand.
        array = np.asarray(image, dtype=np.float64)
        finite = np.isfinite(array)
        high = float(array[finite].max()) if finite.any() else 0.0
        if image.mode == "F":
            # The range (0-1 or 0-255) is read off the finite values: one inf pixel made all the rest black.
            top = 1.0 if high <= 1.0 else 255.0
        else:
            top = 65535.0 if high > 255 or image.mode.startswith("I;16") or sixteen_bit else 255.0
        top = max(top, high)  # values past the usual range: scaled, not clipped to white
        grey = np.where(finite, array, np.where(array == np.inf, top, 0.0))  # +inf: white; -inf, NaN: black
        grey = np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        key = image.info.get("transparency")
        if isinstance(key, (int, float)):  # a PNG colour key: composited on white, as for L below
            grey[array == key] = 255
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode in ("L", "RGB") and "transparency" in image.info:
        # A PNG colour key (tRNS) marks a transparent colour: composite it on white like an
        # alpha channel (it came out as the key colour itself, usually black).
        image = image.convert("RGBA")
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode == "La":  # premultiplied; Pillow converts it to LA only
        image = image.convert("LA")
    if image.mode in ("RGBA", "LA", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")  # L, CMYK, YCbCr, LAB, HSV, ...


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (1, 3, H, W) in [0, 1]."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    array = np.asarray(to_rgb(image), dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0)


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float tensor (1, 3, H, W) or (3, H, W) in [0, 1] -> RGB PIL image (values clamped)."""
    if tensor.dim() == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {tensor.shape[0]}")
        tensor = tensor[0]
    if tensor.dim() != 3 or tensor.shape[0] != 3:
        raise ValueError(f"expected an image tensor of shape (1, 3, H, W), got {tuple(tensor.shape)}")
    if not tensor.is_floating_point():
        # clamping 0-255 integers (or booleans) to [0, 1] silently gave an all-white image
        raise ValueError(f"expected floats in [0, 1], got {tensor.dtype} (for 0-255 data: tensor.float() / 255)")
    array = tensor.detach().float().cpu().nan_to_num(0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


def save_image(image: torch.Tensor | Image.Image, path: str | os.PathLike, *, quality: int = 95,
               exclusive: bool = False) -> Path:
    """Write ``image`` as PNG or JPEG according to the extension of ``path`` (``exclusive``: never over an
    existing file, ``replace_file``'s)."""
    path = Path(path)
    fmt = SAVE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"{path}: unsupported output extension {path.suffix or '(none)'!r}; "
                         "use .png, .jpg or .jpeg")
    if isinstance(image, torch.Tensor):
        image = tensor_to_pil(image)
    image = to_rgb(image)
    if path.parent and not path.parent.exists():
        raise ImageError(f"{path}: folder {path.parent} does not exist")
    options = {"quality": quality} if fmt == "JPEG" else {}
    # A temporary file first, so that a failed write never leaves a half-written file (replace_file)
    try:
        replace_file(path, lambda p: image.save(p, format=fmt, **options), exclusive=exclusive)
    except OSError as exc:
        # the reason alone: the OSError names the temporary file, which the user never asked for
        raise ImageError(f"{path}: cannot write image ({exc.strerror or exc})") from None
    return path


def resize_long_side(image: torch.Tensor, long_side: int,
                     source_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Resize (1, 3, H, W) so that max(H, W) == long_side, keeping the aspect ratio (antialiased).

    ``source_hw``: the (H, W) of the original that ``image`` was shrunk from; the result then has
    the size the original would give, to the pixel."""
    height, width = source_hw or image.shape[-2:]
    scale = long_side / max(height, width)
    new_size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if new_size == tuple(image.shape[-2:]):
        return image
    shrinking = any(n < o for n, o in zip(new_size, image.shape[-2:]))
    return torch.nn.functional.interpolate(image, size=new_size, mode="bilinear", align_corners=False,
                                           antialias=shrinking).clamp(0, 1)
