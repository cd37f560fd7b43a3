"""Fused against unfused training, per model-epoch: does horizontal fusion (HFTA) pay on this CPU?

K models of one architecture, each with its own learning rate, data order and shuffle (the tutorial grid's
lr x shuffle groups: 4 models at batch 100, 4 at batch 1000), trained on the real Fashion-MNIST training split for
the same steps, side by side in one invocation:

- unfused: one model after the other, the sweep's own step (`train.train`: channels_last input, fused Adam, loss
  in fp32, the per-step sums it keeps);
- grouped: one wide network: convolutions with groups=K over the K models' channels, BatchNorm over K x C
  channels, linear layers as one batched matmul (`baddbmm`), each model fed its own images as its own channel;
- dense: the same, but each convolution is one dense convolution over a block-diagonal weight (a mask keeps
  the models apart): K times the multiply-adds, in oneDNN's faster wide-channel kernels;
- vmap: `torch.func.stack_module_state` + `vmap(functional_call)`, the generic route.

Every fused variant updates its stacked parameters with Adam per model (learning rate per model, broadcast over
that model's slice), so it trains what the unfused path trains. Before timing, each variant trains a few steps from
the same initial weights on the same batches as the unfused models, and the largest parameter difference is
printed: float rounding only, or the variant would be measuring something else.

Printed: per group and variant the median seconds per model-epoch over `--repeat` rounds (order rotating) and the
median of the per-round ratios unfused / variant (above 1: fusion is faster). The goal was 2x for the tutorial
network.

`.venv/bin/python benchmarks/bench_fused.py --repeat 3` (about 5 minutes on 2 cores); `--arch vgg_bn_lean` for the
default pipeline's network; `--device cuda --fraction 1` on a GPU (about a minute on an H100).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.func import functional_call, stack_module_state, vmap

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from bench_tracking_design import cpu_description  # noqa: E402  (this folder is first on sys.path)
from fashion_mlops.data.manifest import load_manifest  # noqa: E402
from fashion_mlops.data.splits import Split, load_split, train_val_split  # noqa: E402
from fashion_mlops.models import build_model  # noqa: E402
from fashion_mlops.train import to_float  # noqa: E402

BETAS, EPS = (0.9, 0.999), 1e-8
DEVICE = torch.device("cpu")  # set from --device in main()


def device_description() -> str:
    """The CPU with its ISA flags, or the GPU's name when the benchmark runs on CUDA."""
    if DEVICE.type == "cuda":
        return f"{torch.cuda.get_device_name(DEVICE)} (CUDA {torch.version.cuda}, torch {torch.__version__})"
    return cpu_description()


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """cuDNN convolutions in full fp32 (no TF32) and deterministic, for the parameter check; the timed runs keep
    torch's defaults, as the sweep does."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = saved


def synchronize() -> None:
    """Wait for queued GPU work, so a timer reads finished steps (nothing to wait for on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@dataclass(frozen=True)
class Member:
    """One grid cell of a fusable group: what differs between the models trained together."""

    lr: float
    shuffle: bool
    seed: int = 42


# --- the wide network -----------------------------------------------------------------------------------------


class WideConv(nn.Module):
    """K convolutions of the same shape as one: grouped, or dense over a block-diagonal weight."""

    def __init__(self, convs: list[nn.Conv2d], dense: bool) -> None:
        super().__init__()
        first, k = convs[0], len(convs)
        if first.groups != 1:
            raise NotFusable("grouped convolutions")
        self.stride, self.padding, self.k, self.dense = first.stride, first.padding, k, dense
        weight = torch.cat([c.weight.detach() for c in convs])
        if dense:  # [K*out, K*in, kh, kw], model i's weights on the i-th diagonal block
            out, inp = first.out_channels, first.in_channels
            mask = torch.block_diag(*[torch.ones(out, inp, device=weight.device)] * k)[:, :, None, None]
            weight = weight.repeat(1, k, 1, 1) * mask
            self.register_buffer("mask", mask)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.cat([c.bias.detach() for c in convs])) if first.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dense:
            return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, groups=self.k)


class WideLinear(nn.Module):
    """K linear layers as one batched matmul over [K, batch, features]."""

    def __init__(self, linears: list[nn.Linear]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([lin.weight.detach().t() for lin in linears]).contiguous())
        self.bias = nn.Parameter(torch.stack([lin.bias.detach()[None] for lin in linears]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class PerModelFeatures(nn.Module):
    """[batch, K*C, H, W] -> [K, batch, C*H*W]: where the convolutional part hands over to the linear one."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.k, -1).transpose(0, 1)


class NotFusable(ValueError):
    """The architecture has a layer the wide network cannot stack."""


def widen(models: list[nn.Module], dense: bool) -> nn.Sequential:
    """One network computing K models of a chain-shaped architecture (conv, BN, ReLU, pool, dropout, linear)."""
    traced = [fx.symbolic_trace(m) for m in models]
    layers: list[nn.Module] = []
    chains = [[n for n in t.graph.nodes if n.op not in ("placeholder", "output")] for t in traced]
    for position, node in enumerate(chains[0]):
        if (node.op, node.target) in (("call_method", "flatten"), ("call_function", torch.flatten)):
            layers.append(PerModelFeatures(len(models)))
            continue
        if node.op != "call_module":
            raise NotFusable(f"{node.op} {node.target}")
        same = [t.get_submodule(chain[position].target) for t, chain in zip(traced, chains, strict=True)]
        first = same[0]
        if isinstance(first, nn.Conv2d):
            layers.append(WideConv(same, dense))
        elif isinstance(first, nn.BatchNorm2d):
            wide = nn.BatchNorm2d(first.num_features * len(same), first.eps, first.momentum)
            with torch.no_grad():
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(wide, name).copy_(torch.cat([getattr(b, name) for b in same]))
            layers.append(wide)
        elif isinstance(first, nn.Linear):
            layers.append(WideLinear(same))
        elif isinstance(first, nn.Flatten):
            layers.append(PerModelFeatures(len(models)))
        elif isinstance(first, nn.ReLU | nn.MaxPool2d | nn.Dropout):
            layers.append(first)
        else:
            raise NotFusable(type(first).__name__)
    return nn.Sequential(*layers)


# --- per-model Adam on stacked parameters ---------------------------------------------------------------------


class StackedAdam:
    """Adam (torch's update rule) over parameters whose first dimension holds K models' slices, lr per model."""

    def __init__(self, params: list[torch.Tensor], lrs: list[float]) -> None:
        self.params, self.step_count = params, 0
        per_model = torch.tensor(lrs, device=params[0].device)
        self.lrs = [self._per_slice(per_model, p) for p in params]
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @staticmethod
    def _per_slice(lrs: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return lrs.repeat_interleave(p.shape[0] // len(lrs)).view(-1, *[1] * (p.dim() - 1))

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        correction1 = 1 - BETAS[0] ** self.step_count
        root_correction2 = (1 - BETAS[1] ** self.step_count) ** 0.5
        for p, m, v, lr in zip(self.params, self.m, self.v, self.lrs, strict=True):
            g = p.grad
            m.lerp_(g, 1 - BETAS[0])
            v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
            denominator = (v.sqrt() / root_correction2).add_(EPS)
            p.addcdiv_(m * (lr / correction1), denominator, value=-1)
            p.grad = None


# --- the training steps ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trainer:
    """K models' training, one way: `run(steps)` trains each of them `steps` steps; `parameters()` gives each model's
    parameters in its own module order (cut out of the stacked ones where fused)."""

    run: Callable[[int], None]
    parameters: Callable[[], list[list[torch.Tensor]]]


class Orders:
    """Each model's own data order, epoch after epoch (a seeded generator per model, as the sweep draws it)."""

    def __init__(self, members: list[Member], n: int, batch_size: int) -> None:
        self.members, self.n, self.batch_size = members, n, batch_size
        self.generators = [torch.Generator().manual_seed(m.seed) for m in members]
        self.orders = [self._order(i).to(DEVICE) for i in range(len(members))]

    def _order(self, i: int) -> torch.Tensor:
        member = self.members[i]
        return torch.randperm(self.n, generator=self.generators[i]) if member.shuffle else torch.arange(self.n)

    def batch(self, i: int, step: int) -> torch.Tensor:
        start = step * self.batch_size % self.n
        return self.orders[i][start : start + self.batch_size]


def unfused_trainer(models: list[nn.Module], members: list[Member], split: Split, orders: Orders) -> Trainer:
    optimizers = [torch.optim.Adam(m.parameters(), lr=c.lr, fused=True) for m, c in zip(models, members, strict=True)]
    for model in models:
        model.to(memory_format=torch.channels_last).train()
    sums = [torch.zeros((), device=DEVICE) for _ in models]

    def run(steps: int) -> None:
        for i, (model, optimizer) in enumerate(zip(models, optimizers, strict=True)):
            for step in range(steps):
                batch = orders.batch(i, step)
                x, y = to_float(split.images[batch], channels_last=True), split.labels[batch]
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums[i] += loss.detach() * len(batch)

    return Trainer(run, lambda: [list(m.parameters()) for m in models])


def stacked_input(split: Split, orders: Orders, k: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The K models' batches as one [batch, K, 28, 28] channels_last input, and their labels [K, batch]."""
    batches = [orders.batch(i, step) for i in range(k)]
    images = torch.stack([split.images[b, 0] for b in batches], dim=1)
    return to_float(images, channels_last=True), torch.stack([split.labels[b] for b in batches])


def per_model_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each model's mean cross-entropy, from logits [K, batch, classes] and labels [K, batch]."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(len(labels), -1).mean(1)


def wide_trainer(models: list[nn.Module], members: list[Member], split: Split, orders: Orders, dense: bool) -> Trainer:
    net = widen(models, dense).to(memory_format=torch.channels_last).train()
    optimizer = StackedAdam(list(net.parameters()), [m.lr for m in members])
    k, loss_sum = len(models), torch.zeros(len(models), device=DEVICE)

    def run(steps: int) -> None:
        nonlocal loss_sum
        for step in range(steps):
            x, y = stacked_input(split, orders, k, step)
            logits = net(x).float()  # [K, batch, classes]
            losses = per_model_losses(logits, y)
            losses.sum().backward()  # each model's gradient is that of its own mean loss
            optimizer.step()
            loss_sum = loss_sum + losses.detach() * y.shape[1]

    return Trainer(run, lambda: unstack(net, k))


def vmap_trainer(models: list[nn.Module], members: list[Member], split: Split, orders: Orders) -> Trainer:
    params, buffers = stack_module_state(models)
    params = {name: p.detach().requires_grad_() for name, p in params.items()}
    base = copy.deepcopy(models[0]).to("meta")  # the architecture only; the weights come in as arguments
    optimizer = StackedAdam(list(params.values()), [m.lr for m in members])
    k, loss_sum = len(models), torch.zeros(len(models), device=DEVICE)
    names = [name for name, _ in models[0].named_parameters()]

    def forward(p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(base, (p, b), (x,))

    def run(steps: int) -> None:
        nonlocal loss_sum
        for step in range(steps):
            batches = [orders.batch(i, step) for i in range(k)]
            x = to_float(torch.stack([split.images[b] for b in batches]), channels_last=False)
            y = torch.stack([split.labels[b] for b in batches])
            logits = vmap(forward, randomness="different")(params, buffers, x).float()
            losses = per_model_losses(logits, y)
            losses.sum().backward()
            optimizer.step()
            loss_sum = loss_sum + losses.detach() * y.shape[1]

    return Trainer(run, lambda: [[params[name][i] for name in names] for i in range(k)])


# --- measuring ------------------------------------------------------------------------------------------------

VARIANTS = ("unfused", "grouped", "dense", "vmap")


def fresh_models(arch: str, members: list[Member]) -> list[nn.Module]:
    models = []
    for member in members:
        torch.manual_seed(member.seed)  # the sweep seeds each cell so before building its model
        models.append(build_model(arch).to(DEVICE))
    return models


def trainer(variant: str, arch: str, members: list[Member], split: Split, batch_size: int) -> Trainer:
    models = fresh_models(arch, members)
    orders = Orders(members, len(split), batch_size)
    if variant == "unfused":
        return unfused_trainer(models, members, split, orders)
    if variant == "vmap":
        return vmap_trainer(models, members, split, orders)
    return wide_trainer(models, members, split, orders, dense=variant == "dense")


def largest_difference(variant: str, arch: str, members: list[Member], split: Split, batch_size: int) -> float:
    """Train `variant` and the unfused models 5 steps from the same weights on the same batches; the largest gap
    between their parameters. Float rounding only for a network without dropout (a fused network draws its dropout
    masks differently); the tutorial network has none. On CUDA the check turns TF32 off: its 10-bit mantissa makes
    rounding noise that Adam turns into steps of a whole lr wherever a gradient is near zero, hiding a real gap."""
    with strict_fp32():
        reference, fused = (trainer(v, arch, members, split, batch_size) for v in ("unfused", variant))
        reference.run(5)
        fused.run(5)
    return max(
        (ours - theirs).detach().abs().max().item()
        for model, fused_model in zip(reference.parameters(), fused.parameters(), strict=True)
        for ours, theirs in zip(model, fused_model, strict=True)
    )


def unstack(net: nn.Sequential, k: int) -> list[list[torch.Tensor]]:
    """Each model's parameters, in its own module order, cut out of the wide network."""
    per_model: list[list[torch.Tensor]] = [[] for _ in range(k)]
    for layer in net:
        if isinstance(layer, WideConv):
            weight = layer.weight.detach()
            rows = weight.shape[0] // k
            for i in range(k):
                block = weight[i * rows : (i + 1) * rows]
                if layer.dense:
                    block = block[:, i * (block.shape[1] // k) : (i + 1) * (block.shape[1] // k)]
                per_model[i].append(block)
                if layer.bias is not None:
                    per_model[i].append(layer.bias.detach()[i * rows : (i + 1) * rows])
        elif isinstance(layer, nn.BatchNorm2d):
            c = layer.num_features // k
            for i in range(k):
                per_model[i] += [layer.weight.detach()[i * c : (i + 1) * c], layer.bias.detach()[i * c : (i + 1) * c]]
        elif isinstance(layer, WideLinear):
            for i in range(k):
                per_model[i] += [layer.weight.detach()[i].t(), layer.bias.detach()[i, 0]]
    return per_model


def measure(args: argparse.Namespace, split: Split) -> dict:
    groups = {batch: [Member(lr, shuffle) for lr in args.lr for shuffle in (True, False)] for batch in args.batch_size}
    results: dict = {
        "device": device_description(),
        "threads": torch.get_num_threads(),
        "arch": args.arch,
        "groups": {},
    }
    for batch, members in groups.items():
        steps_per_epoch = -(-len(split) // batch)
        steps = max(1, round(steps_per_epoch * args.fraction))
        model_epochs = len(members) * steps / steps_per_epoch
        times: dict[str, list[float]] = {v: [] for v in args.variants}
        gaps = {v: largest_difference(v, args.arch, members, split, batch) for v in args.variants if v != "unfused"}
        for round_ in range(args.repeat):
            order = args.variants[round_ % len(args.variants) :] + args.variants[: round_ % len(args.variants)]
            for variant in order:
                run = trainer(variant, args.arch, members, split, batch).run
                run(2)  # warm-up: oneDNN primitives or cuDNN plans, the allocator
                synchronize()
                started = time.perf_counter()
                run(steps)
                synchronize()
                times[variant].append((time.perf_counter() - started) / model_epochs)
        medians = {v: statistics.median(t) for v, t in times.items()}
        ratios = {
            v: statistics.median(u / f for u, f in zip(times["unfused"], times[v], strict=True))
            for v in args.variants
            if v != "unfused"
        }
        results["groups"][batch] = {
            "models": len(members),
            "steps": steps,
            "s_per_model_epoch": times,
            "median_s_per_model_epoch": medians,
            "speedup": ratios,
            "largest_parameter_difference_after_5_steps": gaps,
        }
        print(f"\nbatch {batch}: {len(members)} models (lr {args.lr} x shuffle), {steps} steps each per round")
        print(f"{'variant':<9} {'s / model-epoch (median)':>24} {'[min-max]':>16} {'x unfused':>10} {'max |dp|':>9}")
        for v in args.variants:
            low, high = min(times[v]), max(times[v])
            ratio = f"{ratios[v]:.2f}" if v in ratios else "1.00"
            gap = f"{gaps[v]:.1e}" if v in gaps else ""
            print(f"{v:<9} {medians[v]:>24.2f} {f'[{low:.2f}-{high:.2f}]':>16} {ratio:>10} {gap:>9}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT / "data/raw"))
    parser.add_argument("--manifest", default=str(ROOT / "datasets/fashion-mnist.json"))
    parser.add_argument("--arch", default="simple_cnn")
    parser.add_argument("--lr", type=float, nargs="+", default=[0.01, 0.001])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--fraction", type=float, default=0.25, help="share of an epoch each round trains")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to see whether fusion pays on a GPU")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    if "unfused" not in args.variants:
        args.variants.insert(0, "unfused")
    if args.threads:
        torch.set_num_threads(args.threads)
    global DEVICE
    DEVICE = torch.device(args.device)
    manifest = load_manifest(args.manifest)
    split = train_val_split(load_split(manifest, Path(args.data_dir), "train"), 5000, 42).train
    split = split.to(DEVICE)
    print(f"{device_description()}; {torch.get_num_threads()} threads; {args.arch}; {len(split)} training images")
    results = measure(args, split)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
