"""How hard is the embedded classification benchmark? Three numbers, on the downstream classes:

* generation speed, ms per scene;
* a frozen, randomly initialised swin_micro with a linear probe: the benchmark must not be
  solvable without learning features, or tuning methods cannot be told apart;
* a small CNN trained from scratch: the benchmark must still be learnable.

    PYTHONPATH=. python scripts/scene_difficulty.py --probe-train 2000 --probe-test 1000 --cnn-train 5000
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from peft_bench.backbones.swin import build_swin
from peft_bench.data.scenes import DOWNSTREAM_CLASSES, SceneClassification, SceneGenerator, make_splits

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def materialise(view: SceneClassification) -> tuple[torch.Tensor, torch.Tensor]:
    """All images of a view, ImageNet-normalised, and their labels."""
    images, labels = zip(*(view[i] for i in range(len(view))), strict=True)
    return (torch.stack(images) - IMAGENET_MEAN) / IMAGENET_STD, torch.tensor(labels)


def ms_per_scene(generator: SceneGenerator, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        generator.scene(i)
    return (time.perf_counter() - start) / n * 1000


@torch.no_grad()
def random_swin_features(*image_sets: torch.Tensor, seed: int) -> list[np.ndarray]:
    """Pooled features of one randomly initialised swin_micro for each set of images."""
    torch.manual_seed(seed)
    backbone = build_swin("swin_micro").eval()
    return [torch.cat([backbone(batch) for batch in images.split(256)]).numpy() for images in image_sets]


def probe_accuracy(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> float:
    """Test accuracy of a logistic regression on standardised features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    probe.fit(*train)
    return float(probe.score(*test))


def small_cnn(num_classes: int, width: int = 32) -> nn.Module:
    """Four conv blocks, global pooling and a linear head."""
    layers, channels = [], 3
    for out in (width, 2 * width, 4 * width, 4 * width):
        layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        channels = out
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def dihedral(images: torch.Tensor) -> torch.Tensor:
    """A random flip and quarter turn of a batch: label-preserving, as poses are rotation-invariant
    in distribution and no kind is the mirror image of another."""
    if torch.rand(()) < 0.5:
        images = images.flip(-1)
    return torch.rot90(images, int(torch.randint(4, ())), (2, 3))


def cnn_accuracy(
    train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], epochs: int
) -> float:
    """Test accuracy of `small_cnn` trained from scratch with AdamW and a one-cycle schedule."""
    model = small_cnn(int(train[1].max()) + 1)
    loader = DataLoader(TensorDataset(*train), batch_size=64, shuffle=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=epochs * len(loader))
    for epoch in range(epochs):
        model.train()
        for images, labels in loader:
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(dihedral(images)), labels).backward()
            optimiser.step()
            schedule.step()
        print(f"  cnn epoch {epoch + 1}/{epochs}: test accuracy {evaluate(model, *test):.3f}", flush=True)
    return evaluate(model, *test)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    predictions = torch.cat([model(batch).argmax(1) for batch in images.split(256)])
    return float((predictions == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probe-train", type=int, default=2000)
    parser.add_argument("--probe-test", type=int, default=1000)
    parser.add_argument("--cnn-train", type=int, default=5000, help="0 skips the CNN")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--style", default="default")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = SceneGenerator(DOWNSTREAM_CLASSES, img_size=args.img_size, seed=args.seed, style=args.style)
    print(f"generation: {ms_per_scene(generator, 500):.2f} ms per {args.img_size} px scene")

    n_train = max(args.probe_train, args.cnn_train)
    splits = make_splits(SceneClassification, generator, {"train": n_train, "test": args.probe_test})
    train, test = materialise(splits["train"]), materialise(splits["test"])
    counts = np.bincount(test[1].numpy(), minlength=len(DOWNSTREAM_CLASSES))
    print(f"chance: {counts.max() / counts.sum():.3f} (majority class of the test split)")

    probe_x, probe_y = train[0][: args.probe_train], train[1][: args.probe_train].numpy()
    pixels = probe_accuracy(
        (probe_x.flatten(1).numpy(), probe_y), (test[0].flatten(1).numpy(), test[1].numpy())
    )
    print(f"linear probe on raw pixels: {pixels:.3f}")
    train_features, test_features = random_swin_features(probe_x, test[0], seed=args.seed)
    frozen = probe_accuracy((train_features, probe_y), (test_features, test[1].numpy()))
    print(f"linear probe on frozen random swin_micro: {frozen:.3f}")
    if args.cnn_train:
        cnn_train = (train[0][: args.cnn_train], train[1][: args.cnn_train])
        accuracy = cnn_accuracy(cnn_train, test, args.epochs)
        print(f"small CNN from scratch ({args.cnn_train} scenes, {args.epochs} epochs): {accuracy:.3f}")


if __name__ == "__main__":
    main()
