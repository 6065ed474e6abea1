"""The offline demo dataset: a stand-in for a real deepfake dataset, built from photos that installed wheels ship.

The paper trains on CelebA faces vs face-swap fakes; we cannot ship those, so the demo mimics the *structure*
of a face swap instead of its content: a real crop whose inner (elliptical, feathered) region is replaced by
the output of a generator network. The generator is a small convolutional autoencoder trained, with a fixed
seed, on real training crops; its bottleneck makes the re-synthesised centre subtly smoother and shifted, the
kind of trace a real detector keys on.

Splits are disjoint by source-photo region: each photo is cut into a grid of square tiles (1.5 x the image
size), the tiles are dealt to train/val/test in a fixed diagonal pattern (60/20/20 %), and every crop
lies inside one tile of its split, so no test pixel was ever seen in training while every split still
sees every photo's kinds of content. Each split draws from its own random stream, so generating ``test``
alone gives the same files as generating all three splits.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from models.detector import CLASS_NAMES
from models.progress import Progress, ProgressFn, StopFn, check_stop

SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Tile (row, col) belongs to ``TILE_PATTERN[(row + 2 * col) % 5]``: each split appears in every grid row
#: and column, so val and test tiles are scattered over each photo instead of sitting in one corner.
TILE_PATTERN: tuple[str, ...] = ("train", "train", "val", "train", "test")
DATASET_VERSION = 1


@dataclass(frozen=True)
class PhotoSource:
    """A photo shipped inside an installed package: ``package`` data dir + relative path."""

    name: str
    package: str
    relpath: str


# RGB photographs only: the synthetic images (color.png colour wheel, phantom, chessboards) and the
# grayscale ones are left out, and so is motorcycle_right: it is the stereo twin of motorcycle_left, so its
# train tiles would show the same scene as the left image's test tiles, shifted.
SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", "skimage", "data/astronaut.png"),
    PhotoSource("chelsea", "skimage", "data/chelsea.png"),
    PhotoSource("coffee", "skimage", "data/coffee.png"),
    PhotoSource("rocket", "skimage", "data/rocket.jpg"),
    PhotoSource("motorcycle_left", "skimage", "data/motorcycle_left.png"),
    PhotoSource("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg"),
    PhotoSource("retina", "skimage", "data/retina.jpg"),
    PhotoSource("ihc", "skimage", "data/ihc.png"),
    PhotoSource("grace_hopper", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
)


@dataclass(frozen=True)
class DemoConfig:
    """Everything that determines the dataset's bytes (together with the library versions)."""

    seed: int = 0
    size: int = 64
    n_train: int = 3000
    n_val: int = 400
    n_test: int = 400
    #: Tile side as a multiple of ``size``; crops are ``size`` to tile side, only ever downscaled, so reals
    #: are as sharp as their photo.
    tile_scale: float = 1.5
    #: Crops whose centre's luminance std is below this are redrawn (for both classes alike): on a flat
    #: patch (black sky, a plain wall) any generator is near exact and the label would be noise.
    min_texture: float = 0.05
    generator_crops: int = 384
    generator_steps: int = 600
    generator_batch: int = 16
    generator_lr: float = 2e-3
    #: Channels at the generator's 1/4-resolution bottleneck: fewer means smoother, more detectable centres.
    generator_bottleneck: int = 8
    #: The generator works at 1/scale of the crop's resolution (face swaps are synthesised small, then upsampled).
    generator_scale: int = 2

    def __post_init__(self) -> None:
        if self.size < 16:
            raise ValueError(f"size must be >= 16, got {self.size}")
        for name in ("n_train", "n_val", "n_test"):
            n = getattr(self, name)
            if n < 2 or n % 2:
                raise ValueError(f"{name} must be an even number >= 2 (balanced classes), got {n}")
        if self.generator_steps < 0 or self.generator_crops < 1:
            raise ValueError(
                f"generator_steps must be >= 0 and generator_crops >= 1, got {self.generator_steps}, "
                f"{self.generator_crops}"
            )

    def count(self, split: str) -> int:
        return int(getattr(self, f"n_{split}"))


@dataclass(frozen=True)
class Photo:
    source: PhotoSource
    pixels: np.ndarray  # H x W x 3 uint8
    sha256: str


@dataclass(frozen=True)
class Crop:
    """Where a crop came from: ``side`` x ``side`` pixels at (top, left) of ``photo``, maybe mirrored."""

    photo: str
    top: int
    left: int
    side: int
    flip: bool


def _package_dir(package: str) -> Path:
    # find_spec locates the wheel without importing it (skimage's import is slow and its fetchers may
    # download); we only read files it ships.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; the demo data needs its sample photos")
    return Path(next(iter(spec.submodule_search_locations)))


def load_photos(sources: Sequence[PhotoSource] = SOURCES) -> list[Photo]:
    photos = []
    for src in sources:
        path = _package_dir(src.package) / src.relpath
        data = path.read_bytes()
        with Image.open(path) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
        photos.append(Photo(src, pixels, hashlib.sha256(data).hexdigest()))
    return photos


def split_tiles(height: int, width: int, tile: int) -> dict[str, list[tuple[int, int]]]:
    """``(top, left)`` of each split's ``tile`` x ``tile`` squares in a photo (grid centred, margins unused)."""
    rows, cols = height // tile, width // tile
    y0, x0 = (height - rows * tile) // 2, (width - cols * tile) // 2
    out: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
    for i in range(rows):
        for j in range(cols):
            out[TILE_PATTERN[(i + 2 * j) % len(TILE_PATTERN)]].append((y0 + i * tile, x0 + j * tile))
    return out


def _resize(pixels: np.ndarray, size: int) -> np.ndarray:
    im = Image.fromarray(pixels).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(im, dtype=np.uint8)


def centre_texture(pixels: np.ndarray) -> float:
    """Luminance std (in [0, 1] units) of the middle half of an H x W x 3 uint8 image, where fakes are made."""
    h, w, _ = pixels.shape
    centre = pixels[h // 4 : h - h // 4, w // 4 : w - w // 4].astype(np.float32)
    return float((centre @ np.array([0.299, 0.587, 0.114], np.float32) / 255).std())


def tile_side(config: DemoConfig) -> int:
    return round(config.size * config.tile_scale)


def sample_crop(
    rng: np.random.Generator,
    photos: Sequence[Photo],
    split: str,
    config: DemoConfig,
) -> tuple[np.ndarray, Crop]:
    """A random real crop, ``size`` x ``size`` uint8: random photo, then one of its ``split`` tiles, then a
    random side (``size`` to the tile's), position inside that tile and mirror.
    Crops with a flat centre (``min_texture``) are redrawn.
    """
    tile = tile_side(config)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    usable = [(p, t) for p in photos if (t := split_tiles(p.pixels.shape[0], p.pixels.shape[1], tile)[split])]
    if not usable:
        raise ValueError(f"no photo has a {split} tile of {tile} pixels; lower size or tile_scale")
    for _ in range(1000):
        photo, tiles = usable[int(rng.integers(len(usable)))]
        tile_top, tile_left = tiles[int(rng.integers(len(tiles)))]
        side = int(rng.integers(config.size, tile + 1))
        top = tile_top + int(rng.integers(tile - side + 1))
        left = tile_left + int(rng.integers(tile - side + 1))
        flip = bool(rng.integers(2))
        patch = photo.pixels[top : top + side, left : left + side]
        if flip:
            patch = patch[:, ::-1]
        out = _resize(np.ascontiguousarray(patch), config.size)
        if centre_texture(out) >= config.min_texture:
            return out, Crop(photo.source.name, top, left, side, flip)
    raise RuntimeError(f"no textured crop in 1000 draws for split {split!r}; lower min_texture")


def to_tensor(pixels: np.ndarray) -> Tensor:
    """H x W x 3 uint8 -> 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True)).permute(2, 0, 1).float().div(255)


def to_uint8(image: Tensor) -> np.ndarray:
    """3 x H x W float in [0, 1] -> H x W x 3 uint8 (rounded)."""
    return image.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


class CentreGenerator(nn.Module):
    """The fake-maker: a small conv autoencoder (4x downsampling, ``bottleneck`` channels, transposed-conv decoder)
    that works at ``1/scale`` of the image's resolution.

    Face-swap pipelines synthesise the face at a lower resolution than the frame and upsample it into place,
    which is the resolution mismatch and blending trace detectors key on (Li & Lyu, CVPR-W 2019); the
    bottleneck (~1/6 of the input values) and the decoder's upsampling add a generator's own texture.
    """

    def __init__(self, width: int = 32, bottleneck: int = 8, scale: int = 2) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = scale
        act = nn.LeakyReLU(0.2)
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, padding_mode="reflect"), act,
            nn.Conv2d(width, width, 4, stride=2, padding=1, padding_mode="reflect"), act,
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1, padding_mode="reflect"), act,
            nn.Conv2d(2 * width, bottleneck, 1),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(bottleneck, 2 * width, 1), act,
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1), act,
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), act,
            nn.Conv2d(width, 3, 3, padding=1, padding_mode="reflect"),
            nn.Sigmoid(),
        )  # fmt: skip

    def downscale(self, x: Tensor) -> Tensor:
        if self.scale == 1:
            return x
        return F.interpolate(x, scale_factor=1 / self.scale, mode="bilinear", align_corners=False, antialias=True)

    def reconstruct(self, x: Tensor) -> Tensor:
        """The autoencoder alone, at its working resolution."""
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        out = self.reconstruct(self.downscale(x))
        if self.scale == 1:
            return out
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def train_generator(
    crops: Tensor,
    *,
    seed: int,
    steps: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    patch: int = 32,
    bottleneck: int = 8,
    scale: int = 2,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> tuple[CentreGenerator, float]:
    """Fit the autoencoder to real crops (N x 3 x S x S in [0, 1]) by L1; returns it (eval mode) and the last loss.

    It trains at its working resolution (crops downscaled by ``scale``) on random ``patch`` x ``patch``
    windows, being fully convolutional. Deterministic for a seed: the global RNG is forked, and the caller
    runs it single-threaded (``generate`` does) so float sums happen in one order.
    """
    if crops.dim() != 4 or crops.shape[1] != 3 or crops.shape[0] < 1:
        raise ValueError(f"crops must be N x 3 x H x W with N >= 1, got {tuple(crops.shape)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = CentreGenerator(bottleneck=bottleneck, scale=scale)
        small = net.downscale(crops)
        patch = min(patch, small.shape[-2], small.shape[-1])
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        loss_value = float("nan")
        net.train()
        for step in range(steps):
            check_stop(should_stop, step)
            idx = torch.randint(small.shape[0], (batch_size,), generator=gen)
            oy = int(torch.randint(small.shape[-2] - patch + 1, (1,), generator=gen))
            ox = int(torch.randint(small.shape[-1] - patch + 1, (1,), generator=gen))
            batch = small[idx, :, oy : oy + patch, ox : ox + patch]
            loss = F.l1_loss(net.reconstruct(batch), batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_value = float(loss.detach())
            if progress is not None and (step % 10 == 0 or step == steps - 1):
                progress(Progress(step + 1, steps, loss_value, stage="generator"))
    return net.eval(), loss_value


def face_mask(rng: np.random.Generator, size: int) -> Tensor:
    """A feathered ellipse (1 x S x S in [0, 1]) around a jittered centre: the swapped 'face' region."""
    cy, cx = (size - 1) / 2 + rng.uniform(-0.06, 0.06, size=2) * size
    ry, rx = rng.uniform(0.26, 0.36, size=2) * size
    feather = rng.uniform(0.2, 0.35)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    t = np.clip((1.0 - d) / feather, 0.0, 1.0)
    m = t * t * (3 - 2 * t)  # smoothstep: no hard seam, as face-swap pipelines blend
    return torch.from_numpy(m.astype(np.float32))[None]


@torch.no_grad()
def synthesize_fake(source: Tensor, generator: nn.Module, mask: Tensor) -> Tensor:
    """Blend the generator's re-synthesis of ``source`` (3 x S x S) into it where ``mask`` (1 x S x S) is on."""
    generated = generator(source[None])[0]
    return mask * generated + (1 - mask) * source


def _streams(seed: int) -> dict[str, np.random.Generator]:
    # Independent, named streams: one split's draws never depend on another's counts or on which
    # splits were requested.
    keys = {"generator": 0, "train": 1, "val": 2, "test": 3}
    return {k: np.random.default_rng(np.random.SeedSequence([seed, DATASET_VERSION, v])) for k, v in keys.items()}


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    for dist in ("pillow", "scikit-image", "matplotlib"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def generate(
    out_dir: str | Path,
    config: DemoConfig = DemoConfig(),
    *,
    splits: Sequence[str] = SPLITS,
    progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, Any]:
    """Write ``out_dir/{split}/{fake,real}/*.png``, ``manifest.json`` and ``README.txt``; returns the manifest."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {list(splits)}")
    out = Path(out_dir)
    photos = load_photos()
    streams = _streams(config.seed)
    threads = torch.get_num_threads()
    # One thread: the generator's float sums then happen in one order, so a seed gives the same bytes
    # whatever the machine's core count (it trains in seconds, so little is lost).
    torch.set_num_threads(1)
    try:
        gen_crops = torch.stack(
            [
                to_tensor(sample_crop(streams["generator"], photos, "train", config)[0])
                for _ in range(config.generator_crops)
            ]
        )
        generator, gen_loss = train_generator(
            gen_crops,
            seed=config.seed,
            steps=config.generator_steps,
            batch_size=config.generator_batch,
            lr=config.generator_lr,
            bottleneck=config.generator_bottleneck,
            scale=config.generator_scale,
            progress=progress,
            should_stop=should_stop,
        )
        files: dict[str, list[dict[str, Any]]] = {}
        for split in splits:
            files[split] = _write_split(out, split, photos, generator, streams[split], config, progress, should_stop)
    finally:
        torch.set_num_threads(threads)
    manifest: dict[str, Any] = {
        "name": "deepfake-guard demo dataset",
        "dataset_version": DATASET_VERSION,
        "config": asdict(config),
        "splits": list(splits),
        "classes": list(CLASS_NAMES),
        "split_rule": {
            "tile_px": tile_side(config),
            "pattern": "tile (row, col) of a centred grid -> " + str(list(TILE_PATTERN)) + "[(row + 2 * col) % 5]",
        },
        "sources": [
            {
                "name": p.source.name,
                "package": p.source.package,
                "path": p.source.relpath,
                "sha256": p.sha256,
                "height": int(p.pixels.shape[0]),
                "width": int(p.pixels.shape[1]),
            }
            for p in photos
        ],
        "generator": {
            "architecture": "CentreGenerator (conv autoencoder, 4x down, "
            f"{config.generator_bottleneck}-channel bottleneck, working at 1/{config.generator_scale} resolution)",
            "parameters": sum(p.numel() for p in generator.parameters()),
            "trained_on": f"{config.generator_crops} real crops from train tiles",
            "steps": config.generator_steps,
            "final_l1": round(gen_loss, 6),
            "blend": "feathered ellipse (smoothstep), radii 0.26-0.36 x size, centre jitter +-6%",
        },
        "versions": _versions(),
        "files": files,
    }
    manifest["content_sha256"] = content_hash(files)
    manifest["split_sha256"] = {split: content_hash({split: files[split]}) for split in files}
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.txt").write_text(_readme(manifest))
    return manifest


def _write_split(
    out: Path,
    split: str,
    photos: Sequence[Photo],
    generator: nn.Module,
    rng: np.random.Generator,
    config: DemoConfig,
    progress: ProgressFn | None,
    should_stop: StopFn | None,
) -> list[dict[str, Any]]:
    n = config.count(split)
    records: list[dict[str, Any]] = []
    for cls in CLASS_NAMES:
        (out / split / cls).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        check_stop(should_stop, i)
        cls = CLASS_NAMES[i % 2]  # interleaved: fake, real, fake, ...
        pixels, crop = sample_crop(rng, photos, split, config)
        if cls == "fake":
            fake = synthesize_fake(to_tensor(pixels), generator, face_mask(rng, config.size))
            pixels = to_uint8(fake)
        data = _png_bytes(pixels)
        rel = f"{split}/{cls}/{i // 2:05d}_{crop.photo}.png"
        (out / rel).write_bytes(data)
        records.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), **asdict(crop)})
        if progress is not None and (i % 20 == 0 or i == n - 1):
            progress(Progress(i + 1, n, float("nan"), stage=split))
    return records


def content_hash(files: dict[str, list[dict[str, Any]]]) -> str:
    """One sha256 over every (path, file sha256), so two generations can be compared at a glance."""
    h = hashlib.sha256()
    for split in sorted(files):
        for rec in sorted(files[split], key=lambda r: r["path"]):
            h.update(f"{rec['path']}\0{rec['sha256']}\n".encode())
    return h.hexdigest()


def _readme(manifest: dict[str, Any]) -> str:
    cfg = manifest["config"]
    counts = ", ".join(f"{s}: {len(manifest['files'][s])}" for s in manifest["splits"])
    sources = ", ".join(f"{s['name']} ({s['package']})" for s in manifest["sources"])
    return (
        "deepfake-guard demo dataset (generated; not a real deepfake dataset, and not faces)\n\n"
        f"Layout: {{train,val,test}}/{{fake,real}}/*.png, {cfg['size']}x{cfg['size']} RGB. Images: {counts}.\n"
        f"Seed: {cfg['seed']}. Content sha256: {manifest['content_sha256']}.\n\n"
        f"Reals: random crops (random scale, position and mirror) of photos shipped by installed wheels: {sources}.\n"
        "Splits are disjoint by photo region: each photo is cut into square tiles dealt 60/20/20% to\n"
        "train/val/test in a diagonal pattern; every crop lies inside one tile of its split.\n\n"
        "Fakes: a real crop whose centre (a feathered ellipse) is replaced by the output of a small conv\n"
        "autoencoder trained, with the same seed, on real train crops - the structure of a face swap\n"
        "(a generated inner region blended into a real surrounding).\n\n"
        "Regenerate with: deepfake-guard make-demo-data DIR --seed SEED (see docs/DATA.md); manifest.json\n"
        "lists every file with its sha256 and source crop.\n"
    )
