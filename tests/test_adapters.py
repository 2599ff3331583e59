import numpy as np
import pytest

from benchbench import Split
from benchbench.adapters import adapt, pad_images, to_grey, to_rgb


def _split(c=1, h=28, w=28, n=4, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    return Split(images, np.arange(n, dtype=np.int64), source="test:fixture", partial="2 of 3 rows")


def test_grey_to_rgb_repeats_and_records():
    s = _split(c=1)
    out = adapt(s, channels=3)
    assert out.images.shape == (4, 3, 28, 28)
    for k in range(3):
        np.testing.assert_array_equal(out.images[:, k], s.images[:, 0])
    assert out.adapters == ("rgb",)
    assert out.source == s.source and out.partial == s.partial
    np.testing.assert_array_equal(out.labels, s.labels)
    assert out.fingerprint != s.fingerprint


def test_rgb_to_grey_is_rounded_601_luma():
    px = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [0, 0, 0], [10, 200, 30], [1, 2, 3]],
                  dtype=np.uint8)
    images = px.T.reshape(1, 3, 1, len(px))
    y = to_grey(images)[0, 0, 0]
    expected = np.floor(0.299 * px[:, 0] + 0.587 * px[:, 1] + 0.114 * px[:, 2] + 0.5).astype(int)
    np.testing.assert_array_equal(y, expected)
    assert list(y[:5]) == [76, 150, 29, 255, 0]
    out = adapt(Split(images), channels=1)
    assert out.images.shape == (1, 1, 1, len(px)) and out.adapters == ("grey",)


def test_grey_rgb_grey_round_trip_is_exact():
    s = _split(c=1)
    back = adapt(adapt(s, channels=3), channels=1)
    np.testing.assert_array_equal(back.images, s.images)
    assert back.adapters == ("rgb", "grey")


def test_pad_28_to_32_is_centred_zero_padding():
    s = _split(c=1)
    out = adapt(s, size=32)
    assert out.images.shape == (4, 1, 32, 32) and out.adapters == ("pad32",)
    np.testing.assert_array_equal(out.images[:, :, 2:30, 2:30], s.images)
    border = out.images.copy()
    border[:, :, 2:30, 2:30] = 0
    assert not border.any()


def test_channels_then_pad_records_both_in_order():
    out = adapt(_split(c=1), channels=3, size=32)
    assert out.adapters == ("rgb", "pad32")
    assert out.images.shape == (4, 3, 32, 32)


def test_odd_padding_puts_extra_pixel_bottom_right():
    images = np.full((1, 1, 2, 3), 7, dtype=np.uint8)
    out = pad_images(images, 5)
    assert out[0, 0, 1:3, 1:4].tolist() == [[7, 7, 7], [7, 7, 7]]
    assert out.sum() == 7 * 6


def test_smaller_size_is_an_error():
    with pytest.raises(ValueError, match="smaller than the image"):
        adapt(_split(h=32, w=32), size=28)


def test_noop_records_nothing():
    s = _split(c=3, h=32, w=32)
    assert adapt(s, channels=3, size=32) is s
    assert adapt(s) is s


def test_existing_adapters_are_kept():
    s = adapt(_split(c=1), channels=3)
    out = adapt(s, size=32)
    assert out.adapters == ("rgb", "pad32")


@pytest.mark.parametrize("kwargs", [dict(channels=2), dict(channels=4), dict(size=0), dict(size=3.5)])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        adapt(_split(c=1), **kwargs)


def test_helpers_check_channel_count():
    with pytest.raises(ValueError):
        to_rgb(_split(c=3).images)
    with pytest.raises(ValueError):
        to_grey(_split(c=1).images)
