"""Render examples/room.jpg: a small photo-like room interior, made by us (no third-party image rights).

A tiny numpy ray caster: a box-shaped room (wooden floor, painted walls, a bright window), a table and a
red ball, lit by a ceiling lamp with hard shadows, corner darkening and a little film grain. It has clear
perspective and depth edges, which is what a depth-to-image demo needs. Deterministic for a given seed.

    python examples/make_example.py            # writes examples/room.jpg (512x384, ~30 KB)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

# Room bounds (metres): x across, y up, z towards the camera.
ROOM_X, ROOM_HEIGHT, ROOM_BACK = 2.0, 2.6, -6.0
CAMERA = np.array([0.0, 1.35, 0.6])
LAMP = np.array([0.2, 2.35, -2.6])
WINDOW = (-0.7, 0.8, 0.9, 2.0)  # x0, x1, y0, y1 on the back wall
SPHERE_CENTRE, SPHERE_RADIUS = np.array([0.75, 0.45, -3.3]), 0.45
TABLE_MIN, TABLE_MAX = np.array([-1.55, 0.0, -4.4]), np.array([-0.35, 0.75, -3.2])

FLOOR, CEILING, LEFT, RIGHT, BACK, SPHERE, TABLE = range(7)


def _camera_rays(width: int, height: int, fov_degrees: float = 62.0) -> np.ndarray:
    """Unit ray directions (H, W, 3) of a pinhole camera looking down -z, tilted slightly down."""
    half = np.tan(np.radians(fov_degrees) / 2)
    xs = (np.arange(width) + 0.5) / width * 2 - 1
    ys = 1 - (np.arange(height) + 0.5) / height * 2
    x, y = np.meshgrid(xs * half, ys * half * height / width)
    tilt = np.radians(-6.0)
    directions = np.stack([x, y * np.cos(tilt) + np.sin(tilt), -np.cos(tilt) + y * np.sin(tilt)], axis=-1)
    return directions / np.linalg.norm(directions, axis=-1, keepdims=True)


def _hit_sphere(origins: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Distance along each ray to the ball (inf where missed); ``origins`` is one point or one per ray."""
    offset = origins - SPHERE_CENTRE
    b = np.sum(directions * offset, axis=-1)
    c = np.sum(offset * offset, axis=-1) - SPHERE_RADIUS**2
    disc = b * b - c
    t = -b - np.sqrt(np.maximum(disc, 0))
    return np.where((disc > 0) & (t > 1e-4), t, np.inf)


def _hit_box(origins: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the table (slab method) and the index (0, 1, 2) of the axis whose face was hit."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t0 = (TABLE_MIN - origins) / directions
        t1 = (TABLE_MAX - origins) / directions
    near, far = np.minimum(t0, t1), np.maximum(t0, t1)
    t_enter, t_exit = near.max(axis=-1), far.min(axis=-1)
    hit = (t_enter <= t_exit) & (t_enter > 1e-4)
    return np.where(hit, t_enter, np.inf), near.argmax(axis=-1)


def _trace(directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest hit per ray: distance, material id and surface normal."""
    shape = directions.shape[:2]
    best = np.full(shape, np.inf)
    material = np.zeros(shape, dtype=np.int64)
    normal = np.zeros((*shape, 3))
    planes = [
        (FLOOR, 1, 0.0, (0, 1, 0)),
        (CEILING, 1, ROOM_HEIGHT, (0, -1, 0)),
        (LEFT, 0, -ROOM_X, (1, 0, 0)),
        (RIGHT, 0, ROOM_X, (-1, 0, 0)),
        (BACK, 2, ROOM_BACK, (0, 0, 1)),
    ]
    for ident, axis, position, plane_normal in planes:
        with np.errstate(divide="ignore", invalid="ignore"):
            t = (position - CAMERA[axis]) / directions[..., axis]
        t = np.where(t > 1e-4, t, np.inf)
        closer = t < best
        best, material[closer], normal[closer] = np.where(closer, t, best), ident, plane_normal
    t = _hit_sphere(CAMERA, directions)
    closer = t < best
    best, material[closer] = np.where(closer, t, best), SPHERE
    points = CAMERA + best[..., None] * directions
    normal[closer] = (points[closer] - SPHERE_CENTRE) / SPHERE_RADIUS
    t, axis = _hit_box(CAMERA, directions)
    closer = t < best
    best, material[closer] = np.where(closer, t, best), TABLE
    box_normal = np.zeros((*shape, 3))
    np.put_along_axis(box_normal, axis[..., None], -np.sign(np.take_along_axis(directions, axis[..., None], -1)), -1)
    normal[closer] = box_normal[closer]
    return best, material, normal


def _albedo(points: np.ndarray, material: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Surface colour per pixel: wooden floor planks, painted walls, the window and the objects."""
    colour = np.zeros((*material.shape, 3))
    plank = np.floor(points[..., 0] / 0.32)
    plank_shade = 0.85 + 0.3 * np.modf(np.sin(plank * 12.9898) * 43758.5453)[0] ** 2
    grain = 0.06 * np.sin(points[..., 2] * 9.0 + plank * 2.1 + 3 * np.sin(points[..., 2] * 1.3 + plank))
    seam = (np.modf(points[..., 0] / 0.32 + 100)[0] < 0.03) * 0.45
    wood = np.array([0.52, 0.33, 0.18]) * (plank_shade + grain - seam)[..., None]
    colour[material == FLOOR] = wood[material == FLOOR]
    colour[material == CEILING] = (0.92, 0.91, 0.88)
    colour[(material == LEFT) | (material == RIGHT)] = (0.80, 0.74, 0.62)
    colour[material == BACK] = (0.62, 0.70, 0.72)
    colour[material == SPHERE] = (0.78, 0.16, 0.10)
    colour[material == TABLE] = (0.36, 0.22, 0.13)
    return colour * (1 + 0.02 * rng.standard_normal(material.shape))[..., None]


def _window(points: np.ndarray, material: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask of window pixels and their emitted colour: a sky gradient behind a white cross-shaped frame."""
    x0, x1, y0, y1 = WINDOW
    x, y = points[..., 0], points[..., 1]
    inside = (material == BACK) & (x > x0) & (x < x1) & (y > y0) & (y < y1)
    frame = (np.abs(x - (x0 + x1) / 2) < 0.03) | (np.abs(y - (y0 + y1) / 2) < 0.03)
    frame |= (x - x0 < 0.05) | (x1 - x < 0.05) | (y - y0 < 0.05) | (y1 - y < 0.05)
    height = np.clip((y - y0) / (y1 - y0), 0, 1)[..., None]
    sky = (1 - height) * np.array([1.0, 0.97, 0.9]) + height * np.array([0.55, 0.75, 1.0])
    sky = np.where(frame[..., None], 0.95, 1.6 * sky)
    return inside, sky


def render(width: int = 512, height: int = 384, seed: int = 0) -> np.ndarray:
    """The room as an (H, W, 3) uint8 array."""
    rng = np.random.default_rng(seed)
    directions = _camera_rays(width, height)
    distance, material, normal = _trace(directions)
    points = CAMERA + distance[..., None] * directions
    to_lamp = LAMP - points
    lamp_distance = np.linalg.norm(to_lamp, axis=-1)
    to_lamp /= lamp_distance[..., None]
    # Hard shadows: anything between the surface and the lamp (only the ball and the table can be).
    origins = points + 1e-3 * normal
    shadowed = (_hit_sphere(origins, to_lamp) < lamp_distance) | (_hit_box(origins, to_lamp)[0] < lamp_distance)
    diffuse = np.clip(np.sum(normal * to_lamp, axis=-1), 0, None) * 5.0 / (1 + lamp_distance**2)
    diffuse = np.where(shadowed, 0.0, diffuse)
    # Light from the window falls on the floor and walls nearer the back; a cheap stand-in for bounce light.
    window_glow = 0.25 * np.exp((points[..., 2] - ROOM_BACK) * -0.35)
    # Corners and contact regions receive less ambient light.
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    gaps = np.stack([y, ROOM_HEIGHT - y, x + ROOM_X, ROOM_X - x, z - ROOM_BACK], axis=-1)
    nearest_other = np.sort(gaps, axis=-1)[..., 1]
    occlusion = 1 - 0.45 * np.exp(-nearest_other * 2.5)
    ambient = (0.22 + window_glow) * occlusion
    colour = _albedo(points, material, rng) * (ambient + diffuse)[..., None]
    half_vector = to_lamp - directions
    half_vector /= np.linalg.norm(half_vector, axis=-1, keepdims=True)
    specular = np.clip(np.sum(normal * half_vector, axis=-1), 0, None) ** 60 * (material == SPHERE) * ~shadowed
    colour += 0.6 * specular[..., None]
    window, sky = _window(points, material)
    colour[window] = sky[window]
    colour = colour / (1 + colour)  # gentle tone mapping keeps the lamp-lit walls from clipping
    colour = np.clip(colour * 1.55, 0, 1) ** (1 / 2.2)
    colour += 0.012 * rng.standard_normal(colour.shape)  # film grain
    return (np.clip(colour, 0, 1) * 255 + 0.5).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output", default=str(Path(__file__).with_name("room.jpg")))
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    image = Image.fromarray(render(args.width, args.height, args.seed))
    image.save(args.output, quality=85, optimize=True)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
