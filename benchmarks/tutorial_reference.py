"""A faithful reimplementation of the PyTorch + TensorBoard "run builder" tutorial loop over Fashion-MNIST.

This is the baseline the project grew from, kept as close to the tutorial as possible so that timings and
accuracies can be compared with `fashion-mlops sweep`:

* `torchvision.datasets.FashionMNIST(root, train=True, download=False, transform=transforms.ToTensor())`,
  read from the project's verified IDX files through a temporary root of symlinks;
* one fresh `Network` per run (conv 1->6 5x5, conv 6->12 5x5, ReLU + max-pool 2 each, linear 192->120->60->10),
  `DataLoader(train_set, batch_size, shuffle)`, `Adam(lr)`, `F.cross_entropy`;
* per step: `loss.item() * batch_size` and `get_num_correct(preds, labels)` (an `.item()` host sync each);
* one `SummaryWriter(comment=f' batch_size={bs} lr={lr} shuffle={sh}')` per run, with `add_image` of the first
  batch's grid and `add_graph` at the start, and per epoch `add_scalar` of Loss / Number Correct / Accuracy and
  `add_histogram` of every parameter and its gradient.

Added for the benchmark only (the tutorial does neither): after each run the network's accuracy on the 10k test set
is measured, outside the timed loop; and `subset` can cap the training set for smoke runs.

The tutorial has no validation split, so "best" here is the best *test* accuracy over the runs, i.e. chosen on the
test set itself: an optimistic number for the reference, which makes "project >= reference" a conservative check.

Run directly: `python benchmarks/tutorial_reference.py --data-dir data/raw --workdir /tmp/ref [--json out.json]`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from itertools import product
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Subset
from torch.utils.tensorboard import SummaryWriter
from torchvision import transforms

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# The tutorial's grid: 2 x 2 x 2 = 8 runs.
TUTORIAL_GRID: dict[str, list[Any]] = {
    "lr": [0.01, 0.001],
    "batch_size": [100, 1000],
    "shuffle": [True, False],
}


class Network(nn.Module):
    """The tutorial's CNN, layer for layer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels=1, out_channels=6, kernel_size=5)
        self.conv2 = nn.Conv2d(in_channels=6, out_channels=12, kernel_size=5)
        self.fc1 = nn.Linear(in_features=12 * 4 * 4, out_features=120)
        self.fc2 = nn.Linear(in_features=120, out_features=60)
        self.out = nn.Linear(in_features=60, out_features=10)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = F.relu(self.conv1(t))
        t = F.max_pool2d(t, kernel_size=2, stride=2)
        t = F.relu(self.conv2(t))
        t = F.max_pool2d(t, kernel_size=2, stride=2)
        t = t.reshape(-1, 12 * 4 * 4)
        t = F.relu(self.fc1(t))
        t = F.relu(self.fc2(t))
        t = self.out(t)
        return t


def get_num_correct(preds: torch.Tensor, labels: torch.Tensor) -> int:
    return preds.argmax(dim=1).eq(labels).sum().item()


def make_torchvision_root(data_dir: Path, root: Path) -> Path:
    """`root/FashionMNIST/raw/<idx file>` symlinks to the project's decompressed IDX files, as torchvision expects."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX_FILES:
        source = (data_dir / name).resolve()
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing; run `fashion-mlops download` first")
        link = raw / name
        if not link.exists():
            link.symlink_to(source)
    return root


@torch.no_grad()
def test_accuracy(network: nn.Module, test_set, device: torch.device, batch_size: int = 1000) -> float:
    """Accuracy on the test set (not part of the tutorial; measured outside the timed loop)."""
    network.eval()
    correct = 0
    for images, labels in DataLoader(test_set, batch_size=batch_size, shuffle=False):
        correct += get_num_correct(network(images.to(device)), labels.to(device))
    network.train()
    return correct / len(test_set)


def run_reference(
    data_dir: str | Path,
    workdir: str | Path,
    epochs: int = 3,
    grid: dict[str, list[Any]] | None = None,
    subset: int | None = None,
    device: str = "cpu",
    seed: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the tutorial's loop over `grid` (default: the tutorial's 8 runs) and return timings and accuracies.

    `wall_s` is the tutorial loop itself (loaders, TensorBoard writers, add_image/add_graph, training, per-epoch
    logging) for all runs; `test_eval_s` is the extra test-set evaluation after each run, excluded from `wall_s`;
    `setup_s` is building the two torchvision datasets. TensorBoard event files go to `workdir/runs/`, as
    `SummaryWriter(comment=...)` does relative to the working directory.
    """
    grid = dict(TUTORIAL_GRID if grid is None else grid)
    data_dir, workdir = Path(data_dir).resolve(), Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    torch_device = torch.device(device)
    if seed is not None:
        torch.manual_seed(seed)

    started = time.perf_counter()
    root = make_torchvision_root(data_dir, workdir / "torchvision-root")
    train_set = torchvision.datasets.FashionMNIST(
        root=str(root), train=True, download=False, transform=transforms.ToTensor()
    )
    test_set = torchvision.datasets.FashionMNIST(
        root=str(root), train=False, download=False, transform=transforms.ToTensor()
    )
    if subset is not None and subset < len(train_set):
        train_set = Subset(train_set, range(subset))
    setup_s = time.perf_counter() - started

    runs: list[dict[str, Any]] = []
    loop_s = test_eval_s = 0.0
    keys = list(grid)
    with contextlib.chdir(workdir):  # SummaryWriter(comment=...) writes to ./runs/, as in the tutorial
        for values in product(*grid.values()):
            run = dict(zip(keys, values, strict=True))
            lr, batch_size, shuffle = run["lr"], run["batch_size"], run["shuffle"]
            run_started = time.perf_counter()

            # --- the tutorial's loop body ---
            comment = f" batch_size={batch_size} lr={lr} shuffle={shuffle}"
            network = Network().to(torch_device)
            train_loader = DataLoader(train_set, batch_size=batch_size, shuffle=shuffle)
            optimizer = torch.optim.Adam(network.parameters(), lr=lr)

            images, labels = next(iter(train_loader))
            grid_image = torchvision.utils.make_grid(images)

            tb = SummaryWriter(comment=comment)
            tb.add_image("images", grid_image)
            tb.add_graph(network, images.to(torch_device))

            for epoch in range(epochs):
                total_loss = 0
                total_correct = 0
                for batch in train_loader:
                    images, labels = batch
                    images, labels = images.to(torch_device), labels.to(torch_device)
                    preds = network(images)
                    loss = F.cross_entropy(preds, labels)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()

                    total_loss += loss.item() * batch_size
                    total_correct += get_num_correct(preds, labels)

                tb.add_scalar("Loss", total_loss, epoch)
                tb.add_scalar("Number Correct", total_correct, epoch)
                tb.add_scalar("Accuracy", total_correct / len(train_set), epoch)

                for name, weight in network.named_parameters():
                    tb.add_histogram(name, weight, epoch)
                    tb.add_histogram(f"{name}.grad", weight.grad, epoch)

                if verbose:
                    print("epoch", epoch, "total_correct:", total_correct, "loss:", total_loss, comment, flush=True)
            tb.close()
            # --- end of the tutorial's loop body ---

            run_s = time.perf_counter() - run_started
            loop_s += run_s
            eval_started = time.perf_counter()
            accuracy = test_accuracy(network, test_set, torch_device)
            test_eval_s += time.perf_counter() - eval_started
            runs.append(
                {
                    **run,
                    "train_accuracy": total_correct / len(train_set),
                    "train_loss_sum": total_loss,
                    "test_accuracy": accuracy,
                    "run_s": run_s,
                    "log_dir": tb.get_logdir(),
                }
            )

    best = max(runs, key=lambda r: r["test_accuracy"])
    return {
        "wall_s": loop_s,
        "setup_s": setup_s,
        "test_eval_s": test_eval_s,
        "total_s": time.perf_counter() - started,
        "epochs": epochs,
        "grid": grid,
        "train_images": len(train_set),
        "test_images": len(test_set),
        "device": str(torch_device),
        "torch_threads": torch.get_num_threads(),
        "runs": runs,
        "best_test_accuracy": best["test_accuracy"],
        "best_run": {k: best[k] for k in keys},
        "best_selected_on": "test set (the tutorial has no validation split)",
    }


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data/raw", help="folder with the four decompressed IDX files")
    parser.add_argument("--workdir", default=None, help="where runs/ goes (default: a new temporary folder)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, nargs="+", default=TUTORIAL_GRID["lr"])
    parser.add_argument("--batch-size", type=int, nargs="+", default=TUTORIAL_GRID["batch_size"])
    parser.add_argument("--shuffle", type=parse_bool, nargs="+", default=TUTORIAL_GRID["shuffle"])
    parser.add_argument("--subset", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--device", default="cpu", help="the tutorial runs on the CPU (default: cpu)")
    parser.add_argument("--seed", type=int, default=None, help="torch.manual_seed before the loop (default: none)")
    parser.add_argument("--json", default=None, help="write the result dict here")
    parser.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    grid = {"lr": args.lr, "batch_size": args.batch_size, "shuffle": args.shuffle}
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or stack.enter_context(tempfile.TemporaryDirectory(prefix="tutorial-ref-"))
        result = run_reference(
            args.data_dir,
            workdir,
            epochs=args.epochs,
            grid=grid,
            subset=args.subset,
            device=args.device,
            seed=args.seed,
            verbose=not args.quiet,
        )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"reference: {len(result['runs'])} runs x {result['epochs']} epochs in {result['wall_s']:.1f} s "
        f"(+{result['test_eval_s']:.1f} s test eval); best test accuracy {result['best_test_accuracy']:.4f} "
        f"({result['best_run']}, selected on the test set)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
