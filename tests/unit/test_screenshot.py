"""Screenshot conversion: PPM and PNG in, PNG out, thumbnails."""
from archipelagent.vm.screenshot import encode_png, parse_png, ppm_to_png


def gradient(width, height):
    return bytes((x * 7 + y * 3 + c) % 256 for y in range(height) for x in range(width) for c in range(3))


def test_ppm_round_trip_and_thumbnail():
    rgb = gradient(40, 10)
    ppm = b"P6\n# comment\n40 10\n255\n" + rgb
    width, height, png = ppm_to_png(ppm)
    assert (width, height) == (40, 10)
    assert parse_png(png) == (40, 10, rgb)
    width, height, thumb = ppm_to_png(ppm, max_width=20)
    assert (width, height) == (20, 5) and parse_png(thumb)[0] == 20


def test_png_input_is_kept_or_scaled():
    rgb = gradient(30, 6)
    png = encode_png(30, 6, rgb)
    assert ppm_to_png(png) == (30, 6, png)
    width, height, thumb = ppm_to_png(png, max_width=10)
    assert (width, height) == (10, 2)
