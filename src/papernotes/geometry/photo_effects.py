"""What a camera does to a printed chessboard that an ideal render does not: the effects that made real
photographs fail a check written against renders (issue 20), each with its own switch.

Not a paper method. :class:`PhotoStyle` holds the switches (0 or None turns an effect off); the renderer
(:mod:`~papernotes.geometry.synthetic_board`) applies the print geometry (how much of the outer ring of
squares the paper holds, the white paper margin, the background beyond it) and then
:func:`apply_photo_effects` applies the rest, in the order light meets them: uneven lighting on the scene,
the lens's vignetting and defocus, motion during the exposure, the optics' blur, sensor noise, 8-bit
quantisation, JPEG. Every kernel is symmetric about its centre, so the true corner positions stay where
``cv2.projectPoints`` puts them: the ground truth is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from papernotes.errors import ConfigError


@dataclass(frozen=True)
class PhotoStyle:
    """Switches of a rendered view's realism (the defaults are the ideal render of the old renderer)."""

    ring: float = 1.0  # printed width of the outer ring of squares, in squares (a trimmed print: < 1)
    paper_margin: float | None = None  # white paper beyond the ring, in squares; None: paper everywhere
    background: float = 90.0  # grey level beyond the paper (a wall, a desk)
    lighting: float = 0.0  # fraction of brightness lost across the image along lighting_angle
    lighting_angle: float = 0.6  # direction of the lighting gradient in the image, radians
    vignetting: float = 0.0  # fraction of brightness lost at the image corners (radial, squared)
    defocus: float = 0.0  # radius of the defocus disc, pixels
    motion_blur: float = 0.0  # length of the motion streak during the exposure, pixels
    motion_angle: float = 0.3  # its direction in the image, radians
    jpeg_quality: int | None = None  # JPEG round trip at this quality (1-100); None: none

    def __post_init__(self):
        if not 0 < self.ring <= 1:
            raise ConfigError(f"PhotoStyle.ring must be in (0, 1] squares, got {self.ring}")
        if self.paper_margin is not None and self.paper_margin < 0:
            raise ConfigError(
                f"PhotoStyle.paper_margin must be >= 0 squares or None, got {self.paper_margin}"
            )
        for name in ("lighting", "vignetting"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"PhotoStyle.{name} is a fraction in [0, 1), got {getattr(self, name)}")
        if self.defocus < 0 or self.motion_blur < 0:
            raise ConfigError("PhotoStyle.defocus and motion_blur are lengths in pixels, >= 0")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"PhotoStyle.jpeg_quality must be 1..100 or None, got {self.jpeg_quality}")


PHOTO_STYLES: dict[str, PhotoStyle] = {
    "ideal": PhotoStyle(),
    # a hand-held print like OpenCV's left01..14.jpg: the outer squares trimmed, a white margin, then the
    # room; light from one side, a cheap lens, a little shake, JPEG
    "photo": PhotoStyle(
        ring=0.6,
        paper_margin=0.4,
        background=100.0,
        lighting=0.35,
        vignetting=0.3,
        defocus=1.0,
        motion_blur=2.0,
        jpeg_quality=75,
    ),
}


def disc_kernel(radius: float) -> np.ndarray:
    """A normalised defocus disc (the lens's aperture image) of the given radius, pixels."""
    r = int(np.ceil(radius))
    ys, xs = np.mgrid[-r : r + 1, -r : r + 1]
    kernel = np.clip(radius + 0.5 - np.hypot(xs, ys), 0, 1)  # anti-aliased rim
    return (kernel / kernel.sum()).astype(np.float32)


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A normalised straight streak of ``length`` pixels through the kernel's centre (symmetric: the
    blurred corner stays at its true position)."""
    r = int(np.ceil(length / 2)) + 1
    kernel = np.zeros((2 * r + 1, 2 * r + 1), np.float32)
    for s in np.linspace(-length / 2, length / 2, max(2, int(4 * length) + 1)):
        x, y = r + s * np.cos(angle), r + s * np.sin(angle)
        x0, y0 = int(np.floor(x)), int(np.floor(y))
        fx, fy = x - x0, y - y0
        kernel[y0 : y0 + 2, x0 : x0 + 2] += np.outer([1 - fy, fy], [1 - fx, fx])  # bilinear splat
    return kernel / kernel.sum()


def illumination(image_size: tuple[int, int], style: PhotoStyle) -> np.ndarray:
    """(H, W) gain from the lighting gradient and the lens's vignetting, 1 where neither dims."""
    width, height = image_size
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    gain = np.ones((height, width))
    if style.lighting:
        along = xs * np.cos(style.lighting_angle) + ys * np.sin(style.lighting_angle)
        along = (along - along.min()) / max(along.max() - along.min(), 1e-9)  # 0..1 across the image
        gain *= 1 - style.lighting * along
    if style.vignetting:
        r2 = ((xs - width / 2) ** 2 + (ys - height / 2) ** 2) / ((width / 2) ** 2 + (height / 2) ** 2)
        gain *= 1 - style.vignetting * r2
    return gain


def apply_photo_effects(
    radiance: np.ndarray,
    style: PhotoStyle,
    noise: float,
    blur: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Scene radiance (H, W) float, grey levels -> the (H, W) uint8 image a camera would save."""
    image = radiance
    if style.lighting or style.vignetting:
        image = radiance * illumination((radiance.shape[1], radiance.shape[0]), style)
    if style.defocus > 0:
        image = cv2.filter2D(image, -1, disc_kernel(style.defocus), borderType=cv2.BORDER_REFLECT)
    if style.motion_blur > 0:
        kernel = motion_kernel(style.motion_blur, style.motion_angle)
        image = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), blur)
    image = np.clip(image + rng.normal(0, noise, image.shape), 0, 255).astype(np.uint8)
    if style.jpeg_quality is not None:
        _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(style.jpeg_quality)])
        image = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    return image
