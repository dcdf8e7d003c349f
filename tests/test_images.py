"""Image loading, conversion and saving: every accepted mode and every refused input."""

from __future__ import annotations

import gc
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from artopt.style.images import ImageError, load_image, pil_to_tensor, resize_long_side, save_image, tensor_to_pil


def _encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gradient(width=64, height=48) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.uint8)[:, None].repeat(width, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1), "RGB")


def test_rgb_from_path_bytes_and_file_object(tmp_path):
    path = tmp_path / "a.png"
    _gradient().save(path)
    for source in (path, str(path), path.read_bytes(), open(path, "rb")):
        image = load_image(source)
        assert image.mode == "RGB" and image.size == (64, 48)
        assert np.array_equal(np.asarray(image), np.asarray(_gradient()))


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "1"])
def test_other_modes_become_rgb(mode):
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    image = load_image(_encode(_gradient().convert(mode), fmt))
    assert image.mode == "RGB" and image.size == (64, 48)


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    image = load_image(_encode(rgba))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((5, 5)) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["LA", "La", "RGBa", "PA"])
def test_every_alpha_mode_becomes_rgb(mode):
    from artopt.style.images import to_rgb

    image = to_rgb(Image.new("RGBA", (8, 8), (90, 90, 90, 255)).convert(mode))
    assert image.mode == "RGB" and abs(image.getpixel((0, 0))[0] - 90) <= 2


def test_16_bit_grayscale_is_scaled_not_clipped():
    array = np.full((40, 40), 32768, dtype=np.uint16)  # mid-gray in 16 bit
    image = load_image(_encode(Image.fromarray(array)))
    assert abs(image.getpixel((0, 0))[0] - 128) <= 1


def test_a_non_finite_float_pixel_leaves_the_rest_of_the_image_as_it_was():
    from artopt.style.images import to_rgb

    array = np.full((8, 8), 0.5, dtype=np.float32)  # a 0-1 float image, mid-gray
    array[0, 0], array[0, 1], array[0, 2] = np.inf, -np.inf, np.nan
    with np.errstate(all="raise"):  # no overflow on the way
        image = to_rgb(Image.fromarray(array, mode="F"))
    assert abs(image.getpixel((5, 5))[0] - 128) <= 1
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [255, 0, 0]


@pytest.mark.parametrize("dtype, mode", [(np.int32, "I"), (np.float32, "F")])
def test_32_bit_grayscale_past_16_bits_is_scaled_not_clipped(dtype, mode):
    from artopt.style.images import to_rgb

    array = np.tile(np.array([0, 100_000, 200_000], dtype=dtype), (3, 1))  # floats past 255 were all white
    image = to_rgb(Image.fromarray(array, mode=mode))
    assert [image.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    data = _encode(_gradient(64, 48), "JPEG", exif=exif.tobytes())
    assert load_image(data).size == (48, 64)


def test_refuses_non_image_truncated_missing_and_folder(tmp_path):
    with pytest.raises(ImageError, match="not an image"):
        load_image(b"this is plain text, not a picture")
    data = _encode(_gradient(200, 200), "PNG")
    with pytest.raises(ImageError, match="truncated|damaged"):
        load_image(data[: len(data) // 2])
    jpeg = _encode(_gradient(200, 200), "JPEG")
    with pytest.raises(ImageError, match="truncated|damaged"):
        load_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_refuses_too_large_and_decompression_bombs(monkeypatch):
    data = _encode(_gradient(200, 200))
    with pytest.raises(ImageError, match="too large"):
        load_image(data, max_pixels=10_000)
    # Pillow's own bomb guard (from the header alone) also gives our message.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ImageError, match=r"too large \(over 0.001 megapixels.*decompression bomb; the limit is 0.001\)"):
        load_image(data)


def test_refuses_images_smaller_than_the_network_can_use():
    with pytest.raises(ImageError, match="too small"):
        load_image(_encode(_gradient(100, 20)), min_size=32)


def test_tensor_round_trip_and_save_formats(tmp_path):
    image = _gradient()
    tensor = pil_to_tensor(image)
    assert tensor.shape == (1, 3, 48, 64) and tensor.dtype == torch.float32
    assert 0 <= tensor.min() and tensor.max() <= 1
    assert np.array_equal(np.asarray(tensor_to_pil(tensor)), np.asarray(image))
    save_image(tensor, tmp_path / "out.png")
    save_image(image, tmp_path / "out.JPG")
    assert Image.open(tmp_path / "out.png").format == "PNG"
    assert Image.open(tmp_path / "out.JPG").format == "JPEG"
    with pytest.raises(ImageError, match="unsupported output extension"):
        save_image(image, tmp_path / "out.gif")
    with pytest.raises(ImageError, match="does not exist"):
        save_image(image, tmp_path / "nope" / "out.png")


def test_resize_long_side_keeps_aspect():
    tensor = torch.rand(1, 3, 60, 90)
    assert resize_long_side(tensor, 30).shape[-2:] == (20, 30)
    assert resize_long_side(tensor, 180).shape[-2:] == (120, 180)


def test_resize_long_side_from_a_shrunk_copy_gives_the_originals_size():
    # 701 x 1003 at 64 px: 44.7 rows, 45; a 89 x 128 copy alone would give 44.5, rounded to 44
    copy = torch.rand(1, 3, 89, 128)
    assert resize_long_side(copy, 64).shape[-2:] == (44, 64)
    assert resize_long_side(copy, 64, source_hw=(701, 1003)).shape[-2:] == (45, 64)
    assert resize_long_side(copy, 256, source_hw=(701, 1003)).shape[-2:] == (179, 256)  # up from the copy


def test_tensor_to_pil_refuses_integer_tensors():
    # 0-255 data clamped to [0, 1] used to come out all white, silently
    for tensor in (torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8), torch.ones(3, 4, 4, dtype=torch.bool)):
        with pytest.raises(ValueError, match=r"floats in \[0, 1\].*/ 255"):
            tensor_to_pil(tensor)
    assert tensor_to_pil(torch.full((3, 4, 4), 0.5, dtype=torch.float64)).getpixel((0, 0)) == (128, 128, 128)


@pytest.mark.parametrize("mode, key, other, seen", [
    ("RGB", (0, 0, 0), (200, 0, 0), (200, 0, 0)), ("L", 0, 200, (200,) * 3),
    # 1-bit and 16-bit gray keep their key too (they were handled apart and came out black)
    ("1", 0, 1, (255,) * 3), ("I;16", 0, 30000, (117,) * 3)])
def test_a_colour_key_transparency_is_composited_on_white(mode, key, other, seen):
    """A PNG tRNS colour key on an RGB or gray image is transparency like an alpha channel's."""
    image = Image.new(mode, (40, 40), key)
    image.paste(Image.new(mode, (20, 40), other), (0, 0))
    loaded = load_image(_encode(image, transparency=key))
    assert loaded.getpixel((30, 5)) == (255, 255, 255)  # the keyed colour: white, as for RGBA and palettes
    assert loaded.getpixel((5, 5)) == seen
    assert load_image(_encode(image)).getpixel((30, 5)) == (0, 0, 0)  # without the key: as it was


def test_a_photo_with_damaged_exif_still_loads():
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "hello world description"
    data = bytearray(_encode(Image.new("RGB", (40, 32), (255, 0, 0)), "JPEG", exif=exif))
    start = data.find(b"Exif\x00\x00")
    for offset, value in ((14, 162), (65, 11), (17, 64)):  # garbles the IFD: Pillow raised struct.error
        data[start + offset] = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's "Corrupt EXIF data" warnings
        image = load_image(bytes(data))
    assert image.mode == "RGB" and image.getpixel((0, 0))[0] > 200


def test_an_animated_gif_gives_its_first_frame_and_closes_its_file(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    gc.collect()  # other tests' leftovers warn now, not below
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(path)
        gc.collect()
    assert image.getpixel((0, 0)) == (255, 0, 0)
    # Pillow left its handle on a multi-frame file open: "unclosed file <... name='.../anim.gif'>"
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and str(path) in str(w.message)]


def test_wrong_argument_types_are_type_errors():
    with pytest.raises(TypeError, match="path, bytes or a binary file object, got Image"):
        load_image(_gradient())
    with pytest.raises(TypeError, match="PIL image, got ndarray"):
        pil_to_tensor(np.zeros((4, 4, 3), np.uint8))


# Mutation audit, round 2 (session 51): each test below failed on a one-line bug the suite missed.

def _marked_jpeg(orientation: int) -> bytes:
    """64x48 black JPEG, white top-left corner, with an EXIF orientation."""
    image = Image.new("RGB", (64, 48), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 16, 16))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("orientation, corner", [(6, (47 - 4, 4)), (8, (4, 63 - 4)), (3, (63 - 4, 47 - 4))])
def test_exif_orientation_turns_the_right_way(monkeypatch, fallback, orientation, corner):
    if fallback:  # the path taken when Pillow's exif_transpose fails on damaged EXIF
        monkeypatch.setattr(ImageOps, "exif_transpose", lambda im: (_ for _ in ()).throw(SyntaxError("bad")))
    image = load_image(_marked_jpeg(orientation))
    assert image.getpixel(corner)[0] > 200  # the white corner is where the display puts it
    assert image.getpixel((image.width - 1 - corner[0], image.height - 1 - corner[1]))[0] < 50


def test_a_dark_16_bit_image_stays_dark():
    array = np.full((40, 40), 200, dtype=np.uint16)  # 200 / 65535: nearly black, not 200 / 255
    image = load_image(_encode(Image.fromarray(array)))
    assert image.getpixel((0, 0)) == (1, 1, 1)


def test_a_dark_16_bit_pgm_stays_dark():
    # Pillow opens a 16-bit PGM as "I" (not "I;16"), scaled to 0-65535: its brightest value of 200 read
    # as 200 / 255, 257x too bright
    pgm = b"P5\n40 40\n65535\n" + np.full((40, 40), 200, dtype=">u2").tobytes()
    assert load_image(pgm).getpixel((0, 0)) == (1, 1, 1)
    ten_bit = b"P5\n40 40\n1023\n" + np.full((40, 40), 1023, dtype=">u2").tobytes()  # maxval 1023: white
    assert load_image(ten_bit).getpixel((0, 0)) == (255, 255, 255)


def test_jpeg_is_saved_at_the_quality_asked(tmp_path):
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    save_image(noisy, tmp_path / "hi.jpg")  # default quality 95
    save_image(noisy, tmp_path / "lo.jpg", quality=75)  # Pillow's own default
    assert (tmp_path / "hi.jpg").stat().st_size > 1.3 * (tmp_path / "lo.jpg").stat().st_size


def test_an_eps_is_not_handed_to_ghostscript():
    # Pillow decodes EPS by running Ghostscript where it is installed: not for a web server's uploads.
    # (Here, without Ghostscript, it was "damaged or truncated image (Unable to locate Ghostscript...)".)
    eps = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n"
           b"newpath 0 0 moveto 64 0 lineto 64 64 lineto closepath fill\nshowpage\n%%EOF\n")
    with pytest.raises(ImageError, match="not an image file"):
        load_image(eps)


# sRGB's primaries, D50-adapted as sRGB profiles hold them, and D50 white
_SRGB_PRIMARIES = ((0.4361, 0.2225, 0.0139), (0.3851, 0.7169, 0.0971), (0.1431, 0.0606, 0.7141))
_D50 = (0.9642, 1.0, 0.8249)


def _icc_profile(device_class: bytes, space: bytes, description: str | None, tags: list[tuple[bytes, bytes]]) -> bytes:
    """A minimal ICC v2 profile (PCS XYZ) with these tags besides a description, a white point and a
    copyright, made here since Pillow ships no profile but sRGB's, LAB's and XYZ's."""
    import struct

    text = (description or "").encode("ascii") + b"\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4 + 4 + 2 + 1 + 67)
    tags = [*([(b"desc", desc)] if description is not None else []), (b"wtpt", _xyz_tag(*_D50)),
            (b"cprt", b"text" + bytes(4) + b"none\0"), *tags]
    offset, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, body in tags:
        body += bytes(-len(body) % 4)
        table += sig + struct.pack(">II", offset + len(data), len(body))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"none" + bytes([2, 0x10, 0, 0]) + device_class + space + b"XYZ " + bytes(12)
              + b"acsp" + bytes(4 * 4 + 8 + 4) + b"".join(map(_s15, _D50)) + bytes(4 + 16 + 28))
    return header + struct.pack(">I", len(tags)) + table + data


def _s15(x: float) -> bytes:
    import struct
    return struct.pack(">i", round(x * 65536))


def _xyz_tag(x: float, y: float, z: float) -> bytes:
    return b"XYZ " + bytes(4) + _s15(x) + _s15(y) + _s15(z)


def _matrix_profile(gamma: float, description: str | None) -> bytes:
    """An RGB display profile: sRGB's primaries with one power-law tone curve."""
    import struct

    curve = b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)
    primaries = [(sig, _xyz_tag(*xyz)) for sig, xyz in zip((b"rXYZ", b"gXYZ", b"bXYZ"), _SRGB_PRIMARIES)]
    return _icc_profile(b"mntr", b"RGB ", description,
                        [*primaries, (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])


def _cmyk_profile() -> bytes:
    """A CMYK printer profile whose inks subtract in linear light: (1 - C)(1 - K) of red, and so on, in
    sRGB's primaries (a 2-point lut16 per ink), so 50% black is linear 0.5, sRGB's ~188, where Pillow's
    own CMYK -> RGB, which ignores profiles, gives 127."""
    import itertools
    import struct

    grid = []
    for c, m, y, k in itertools.product((0, 1), repeat=4):  # the first ink varies slowest
        rgb = ((1 - c) * (1 - k), (1 - m) * (1 - k), (1 - y) * (1 - k))
        xyz = [sum(p[i] * v for p, v in zip(_SRGB_PRIMARIES, rgb)) for i in range(3)]
        grid += [min(65535, round(v * 32768)) for v in xyz]  # lut16's XYZ: 1.0 is 0x8000
    identity = b"".join(_s15(1.0 if i % 4 == 0 else 0.0) for i in range(9))
    lut = (b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + identity + struct.pack(">HH", 2, 2)
           + struct.pack(">8H", *[0, 65535] * 4) + struct.pack(f">{len(grid)}H", *grid) + struct.pack(">6H", *[0, 65535] * 3))
    return _icc_profile(b"prtr", b"CMYK", "linear CMYK", [(b"A2B0", lut)])


def _tagged(value: int, icc: bytes | None, fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (40, 40), (value,) * len(mode)).save(buf, format=fmt, icc_profile=icc)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_an_embedded_colour_profile_is_converted_to_srgb(fmt):
    """A photo tagged with another profile than sRGB (a phone's Display P3, Adobe RGB) was read as if
    its values were sRGB's."""
    from PIL import ImageCms

    linear = _matrix_profile(1.0, "linear RGB")  # sRGB's primaries, no tone curve: 128 of 255 is sRGB's ~188
    assert ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(linear))).strip() == "linear RGB"
    got = np.asarray(load_image(_tagged(128, linear, fmt)), dtype=int)
    assert abs(got - 188).max() <= 3 and "icc_profile" not in load_image(_tagged(128, linear, fmt)).info
    rgba = load_image(_tagged(128, linear, "PNG", "RGBA"))  # alpha 128 over white after the conversion
    assert abs(np.asarray(rgba, dtype=int) - round((188 * 128 + 255 * 127) / 255)).max() <= 3
    # sRGB, no profile, a damaged one, or one of another colour space: the values as they are
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    for icc in (srgb, None, linear[:200], b"not a profile"):
        assert (np.asarray(load_image(_tagged(128, icc, fmt))) == 128).all()
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    assert (np.asarray(load_image(_tagged(128, lab, "PNG"))) == 128).all()
    # what the profile is called does not matter (GIMP names its linear one "Linear sRGB"), nor whether it
    # has a name at all (that was a traceback)
    for name in ("GIMP built-in Linear sRGB", None):
        assert abs(np.asarray(load_image(_tagged(128, _matrix_profile(1.0, name), fmt)), dtype=int) - 188).max() <= 3
    # a palette image: its colours converted too
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (128, 128, 128)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        buf, format="PNG", icc_profile=linear)
    assert abs(np.asarray(load_image(buf.getvalue()), dtype=int) - 188).max() <= 3
    # a CMYK photo whose profile is not a CMYK one: converted as without a profile
    untagged = np.asarray(load_image(_tagged(60, None, "JPEG", "CMYK")))
    assert (np.asarray(load_image(_tagged(60, linear, "JPEG", "CMYK"))) == untagged).all()



@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_a_cmyk_photo_with_its_printing_profile_comes_out_as_that_profile_renders_it(fmt):
    """Pillow's own CMYK -> RGB ignores the profile; the loader must give what the profile's colour
    management gives (a real printing profile, Ghostscript's SWOP one, gave the same by hand)."""
    from PIL import ImageCms

    cmyk = _cmyk_profile()
    assert ImageCms.ImageCmsProfile(io.BytesIO(cmyk)).profile.xcolor_space.strip() == "CMYK"
    got = np.asarray(load_image(_tagged(0, cmyk, fmt, "CMYK")), dtype=int)  # no ink: white
    assert (got >= 253).all()
    buf = io.BytesIO()
    Image.new("CMYK", (40, 40), (0, 0, 0, 128)).save(buf, format=fmt, icc_profile=cmyk)
    half_black = np.asarray(load_image(buf.getvalue()), dtype=int)
    assert abs(half_black - 188).max() <= 3  # linear 0.5
    assert (np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")) == 127).all()  # what it was read as
    # a photo's worth of colours: exactly LittleCMS's rendering through the profile
    photo = Image.open(Path(__file__).resolve().parents[1] / "assets" / "photos" / "chelsea.jpg").convert("CMYK")
    buf = io.BytesIO()
    photo.save(buf, format=fmt, icc_profile=cmyk)
    managed = ImageCms.profileToProfile(Image.open(io.BytesIO(buf.getvalue())), ImageCms.ImageCmsProfile(io.BytesIO(cmyk)),
                                        ImageCms.createProfile("sRGB"), outputMode="RGB")
    assert abs(np.asarray(load_image(buf.getvalue()), dtype=int) - np.asarray(managed, dtype=int)).max() <= 1
