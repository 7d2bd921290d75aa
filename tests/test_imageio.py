import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from clrp.errors import ClrpError, InvalidImage
from clrp.imageio import load_image, open_image, tensor_to_display, to_tensor
from clrp.models.preprocessing import Preprocessing

PP = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(64, 64), resize=None)
PP_CROP = Preprocessing(input_size=(224, 224), resize=256)


def _rgb(w=80, h=60, seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.linspace(0, 255, w)[None, :].astype(np.uint8)
    a[..., 1] = np.linspace(0, 255, h)[:, None].astype(np.uint8)
    a[..., 2] = rng.integers(0, 256, (h, w))
    return a


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_formats_bytes_path_filelike(tmp_path, fmt):
    im = Image.fromarray(_rgb())
    data = _encode(im, fmt)
    p = tmp_path / f"img.{fmt.lower()}"
    p.write_bytes(data)
    outs = [load_image(data, PP), load_image(p, PP), load_image(str(p), PP), load_image(io.BytesIO(data), PP)]
    for o in outs:
        assert o.tensor.shape == (1, 3, 64, 64) and o.tensor.dtype == torch.float32
        assert o.display.shape == (64, 64, 3) and o.display.dtype == np.uint8
        assert o.original_size == (80, 60) and o.source_format == fmt
        assert torch.equal(o.tensor, outs[0].tensor)
    # tensor and display encode the same pixels
    assert np.abs(tensor_to_display(outs[0].tensor, PP).astype(int) - outs[0].display).max() <= 1
    if fmt in ("PNG", "BMP", "TIFF"):  # lossless: the decoded original is exact
        assert np.array_equal(outs[0].original, _rgb())


def test_tensor_matches_manual_preprocessing():
    a = _rgb(100, 100)
    o = load_image(_encode(Image.fromarray(a), "PNG"), PP)
    ref = np.asarray(Image.fromarray(a).resize((64, 64), Image.Resampling.BILINEAR), dtype=np.float32) / 255
    ref = (torch.from_numpy(ref).permute(2, 0, 1)[None] - 0.5) / 0.25
    assert torch.allclose(o.tensor, ref, atol=1e-5)


def test_resize_and_center_crop_geometry():
    im = Image.fromarray(_rgb(400, 300))
    o = load_image(_encode(im, "PNG"), PP_CROP)
    assert o.tensor.shape == (1, 3, 224, 224) and o.display.shape == (224, 224, 3)
    g = PP_CROP.geometry(400, 300)
    assert g["resized"] == (341, 256) and g["crop"] == (58, 16, 282, 240)
    # torchvision's own transform agrees
    import torchvision.transforms.v2 as T

    tv = T.Compose([T.Resize(256, antialias=True), T.CenterCrop(224)])
    ref = np.asarray(tv(im))
    assert np.abs(ref.astype(int) - o.display).mean() < 1.0


def test_grayscale_and_bilevel():
    g = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    for mode in ("L", "1"):
        im = Image.fromarray(g).convert(mode)
        o = load_image(_encode(im, "PNG"), PP)
        assert o.source_mode == mode
        assert np.array_equal(o.display[..., 0], o.display[..., 1]) and np.array_equal(o.display[..., 1], o.display[..., 2])
    o = load_image(_encode(Image.fromarray(g), "PNG"), PP)
    assert np.array_equal(o.original[..., 0], g)


def test_rgba_composited_on_white_by_default_and_black_on_request():
    a = np.zeros((64, 64, 4), np.uint8)
    a[..., 0] = 255  # red, fully transparent on the left half, opaque on the right
    a[:, 32:, 3] = 255
    data = _encode(Image.fromarray(a, "RGBA"), "PNG")
    white = load_image(data, PP).original
    black = load_image(data, PP, background="black").original
    assert (white[:, :32] == 255).all()
    assert (black[:, :32] == 0).all()
    assert (white[:, 32:] == [255, 0, 0]).all() and (black[:, 32:] == [255, 0, 0]).all()
    # LA too
    la = Image.fromarray(a[..., [0, 3]], "LA")
    assert (load_image(_encode(la, "PNG"), PP).original[:, :32] == 255).all()


def test_palette_with_and_without_transparency():
    p = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    o = load_image(_encode(p, "PNG"), PP)
    assert o.source_mode == "P"
    assert np.array_equal(o.original, np.asarray(p.convert("RGB")))
    pt = Image.new("P", (10, 10), 0)
    pt.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pt.paste(1, (5, 0, 10, 10))
    buf = _encode(pt, "PNG", transparency=0)
    o = load_image(buf, PP)
    assert (o.original[:, :5] == 255).all() and (o.original[:, 5:] == [0, 255, 0]).all()


def test_cmyk_jpeg_and_tiff():
    cmyk = Image.fromarray(_rgb()).convert("CMYK")
    for fmt in ("JPEG", "TIFF"):
        o = load_image(_encode(cmyk, fmt), PP)
        assert o.source_mode == "CMYK" and o.original.shape == (60, 80, 3)
        assert np.abs(o.original.astype(int) - _rgb()).mean() < 12


def test_16bit_grayscale_scaled_not_clipped():
    v = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    im = Image.fromarray(v)
    assert im.mode.startswith("I;16")
    for fmt in ("PNG", "TIFF"):
        o = load_image(_encode(im, fmt), PP)
        g = o.original[..., 0].astype(int)
        expect = np.rint(v / 257.0).astype(int)
        assert np.abs(g - expect).max() <= 1, fmt
        assert g.min() == 0 and g.max() == 255 and len(np.unique(g)) > 200


def test_float_and_int32_modes():
    f = Image.fromarray(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32), "F")
    o = load_image(_encode(f, "TIFF"), PP)
    assert o.original.max() == 255 and o.original.min() == 0


def test_exif_orientation_applied():
    a = _rgb(80, 40)  # wide
    im = Image.fromarray(a)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    data = _encode(im, "JPEG", exif=exif.tobytes(), quality=95)
    o = load_image(data, PP)
    assert o.original_size == (40, 80)  # now tall
    ref = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert np.array_equal(o.original, ref)


def test_arrays_and_pil_images_accepted():
    a = _rgb()
    o1 = load_image(a, PP)
    o2 = load_image(Image.fromarray(a), PP)
    assert torch.equal(o1.tensor, o2.tensor)
    assert to_tensor(a, PP).shape == (1, 3, 64, 64)
    with pytest.raises(InvalidImage):
        load_image(a.astype(np.float32), PP)


def test_accepts_loaded_model_as_preprocessing():
    class LM:
        preprocessing = PP

    assert load_image(_rgb(), LM()).tensor.shape == (1, 3, 64, 64)


# ------------------------------------------------------------------------------ refusals


def test_decompression_bomb_refused_before_decoding():
    # a 1-bit PNG of 20000 x 20000 = 400 Mpx compresses to a few kB
    big = Image.new("1", (20000, 20000), 0)
    data = _encode(big, "PNG")
    assert len(data) < 200_000
    with pytest.raises(InvalidImage, match="bomb|limit"):
        load_image(data, PP)
    # the pixel limit is configurable
    small = _encode(Image.fromarray(_rgb(100, 100)), "PNG")
    with pytest.raises(InvalidImage, match="limit"):
        load_image(small, PP, max_pixels=5000)
    assert load_image(small, PP, max_pixels=10_000).tensor.shape == (1, 3, 64, 64)


def test_pil_bomb_error_is_converted(monkeypatch):
    # even with our own limit raised, PIL's DecompressionBombError/Warning become InvalidImage
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = _encode(Image.fromarray(_rgb(40, 40)), "PNG")  # 1600 px > MAX_IMAGE_PIXELS -> warning
    with pytest.raises(InvalidImage, match="bomb"):
        load_image(data, PP, max_pixels=10**9)
    data = _encode(Image.fromarray(_rgb(60, 60)), "PNG")  # 3600 > 2 * MAX -> error
    with pytest.raises(InvalidImage, match="bomb"):
        load_image(data, PP, max_pixels=10**9)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_truncated_refused(fmt):
    data = _encode(Image.fromarray(_rgb(200, 200)), fmt)
    with pytest.raises(InvalidImage):
        load_image(data[: len(data) // 2], PP)


@pytest.mark.parametrize("data", [
    b"",
    b"hello, this is plain text, not an image",
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,  # PNG signature, garbage after
    b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4,  # JPEG magic, garbage after
    bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)),
])
def test_garbage_refused(data):
    with pytest.raises(InvalidImage) as ei:
        load_image(data, PP)
    assert isinstance(ei.value, ClrpError) and str(ei.value)


def test_missing_file_and_wrong_types(tmp_path):
    with pytest.raises(InvalidImage, match="not found"):
        load_image(tmp_path / "nope.png", PP)
    with pytest.raises(InvalidImage):
        load_image(12345, PP)
    with pytest.raises(InvalidImage, match="binary"):
        load_image(io.StringIO("text"), PP)
    with pytest.raises(InvalidImage, match="larger than"):
        load_image(b"\x00" * 2000, PP, max_bytes=1000)
    with pytest.raises(TypeError):
        load_image(_rgb(), object())


def test_open_image_returns_rgb():
    im, fmt, mode = open_image(_encode(Image.fromarray(_rgb()).convert("L"), "PNG"))
    assert im.mode == "RGB" and fmt == "PNG" and mode == "L"
