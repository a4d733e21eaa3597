"""The hand-written training script ``bench_train.py endtoend`` times against ``specc train``.

What an ML engineer would write for the same job, with torch, scikit-learn and matplotlib only:
LeNet-5 (``specs/lenet.yaml`` written as an ``nn.Sequential``) or the small ResNet of
``specs/small_resnet.yaml`` (the same layers and parameter names' shapes, written as modules) on
scikit-learn's digits resized to 28x28 and standardised, a 70/10/20 split, AdamW, batches of 64, and
per epoch a shuffled pass, a validation pass (loss, accuracy), a checkpoint (model + optimizer +
epoch, safetensors for the weights, written to a temporary file and renamed) and
``metrics.csv``/``metrics.json``; at the end a test pass, the final weights and ``curves.png``.
Nothing is skipped that ``specc train`` does for this run, and nothing is added.

    python benchmarks/hand_train.py --out runs/hand --epochs 5 [--model small_resnet] [--seed 0]

``--freeze-at-exit`` does what the ``specc`` command line does when it exits (``gc.freeze()`` after
the other exit handlers, so the interpreter's shutdown collections skip torch's objects); the
benchmark reports the ratio against the script without and with it.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits


def lenet() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Conv2d(6, 16, 5), nn.Sigmoid(), nn.AvgPool2d(2, 2), nn.Flatten(),
        nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10),
    )  # fmt: skip


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(c_out)]


class Basic(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity or 1x1 conv+BN projection shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(c_in, c_out, 3, stride), nn.ReLU(), *conv_bn(c_out, c_out, 3))
        project = stride != 1 or c_in != c_out
        self.shortcut = nn.Sequential(*conv_bn(c_in, c_out, 1, stride)) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided), 1x1 expand (x4), projection shortcut, ReLU after the sum."""

    def __init__(self, c_in: int, planes: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(c_in, planes, 1), nn.ReLU(), *conv_bn(planes, planes, 3, stride), nn.ReLU(),
            *conv_bn(planes, 4 * planes, 1),
        )  # fmt: skip
        self.shortcut = nn.Sequential(*conv_bn(c_in, 4 * planes, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class PreAct(nn.Module):
    """BN, ReLU, 3x3 conv, plus the input (stage4 of the spec)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


def small_resnet(width: int = 16) -> nn.Sequential:
    """``specs/small_resnet.yaml``: 67,898 parameters."""
    return nn.Sequential(
        *conv_bn(1, width, 3), nn.ReLU(),
        Basic(width, width), Basic(width, width), Basic(width, 2 * width, stride=2),
        Bottleneck(2 * width, width, stride=2), PreAct(4 * width),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, 10),
    )  # fmt: skip


MODELS = {"lenet": lenet, "small_resnet": small_resnet}


def data(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    y = torch.tensor(digits.target, dtype=torch.int64)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_test, n_val = int(0.2 * len(y)), int(0.1 * len(y))
    parts = {"test": perm[:n_test], "val": perm[n_test : n_test + n_val], "train": perm[n_test + n_val :]}
    mean, std = x[parts["train"]].mean(), x[parts["train"]].std()
    return {k: ((x[i] - mean) / std, y[i]) for k, i in parts.items()}


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    for i in range(0, len(y), batch):
        out = model(x[i : i + batch])
        loss += F.cross_entropy(out, y[i : i + batch], reduction="sum").item()
        correct += int((out.argmax(1) == y[i : i + batch]).sum())
    return loss / len(y), correct / len(y)


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, epoch: int) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    torch.save(
        {"optimizer": opt.state_dict(), "epoch": epoch, "rng": torch.get_rng_state()}, tmp / "state.pt"
    )
    if path.exists():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()
    os.replace(tmp, path)


def write_metrics(out: Path, history: list[dict[str, float]], final: dict[str, float] | None) -> None:
    with open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    (out / "metrics.json").write_text(json.dumps({"epochs": history, "final": final}, indent=2))


def plot(out: Path, history: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3))
    ax1, ax2 = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in history]
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], label="val")
    ax1.legend()
    ax2.plot(epochs, [r["val_accuracy"] for r in history])
    fig.savefig(out / "curves.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=sorted(MODELS), default="lenet")
    parser.add_argument("--freeze-at-exit", action="store_true")
    args = parser.parse_args()
    if args.freeze_at_exit:
        import atexit
        import gc

        atexit.register(gc.freeze)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    splits = data(args.seed)
    model = MODELS[args.model]()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = splits["train"]
    history: list[dict[str, float]] = []
    for epoch in range(1, args.epochs + 1):
        model.train()
        start, total, seen = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(len(y)).split(args.batch):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        val_loss, val_acc = evaluate(model, *splits["val"], args.batch)
        rate = seen / (time.perf_counter() - start)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / seen,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "rate": rate,
            }
        )
        print(f"epoch {epoch}: loss {total / seen:.4f} val_loss {val_loss:.4f} val_accuracy {val_acc:.4f}")
        write_metrics(args.out, history, None)
        save_checkpoint(args.out / "checkpoint", model, opt, epoch)
    test_loss, test_acc = evaluate(model, *splits["test"], args.batch)
    write_metrics(args.out, history, {"test_loss": test_loss, "test_accuracy": test_acc})
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / "weights.safetensors")
    )
    plot(args.out, history)
    print(f"test_loss {test_loss:.4f} test_accuracy {test_acc:.4f}")


if __name__ == "__main__":
    main()
