"""Pretraining step speed: `PretrainModule` under a Lightning Trainer against a bare PyTorch loop, in one run.

Methods: the masked-image methods `mlm_ema`, `mae`, `mlm_clip` and the multi-view methods `dino`, `ibot`,
`simclr` (options from configs/objective/<method>.yaml); `--method all` compares each in turn.

Both variants train the same encoder and method (`create_encoder` + `build_method`, from the same seed)
on one fixed, pre-built batch of random tensors shaped as the data pipeline delivers them: `image`
(B, 3, H, W) for a masked-image method; for a multi-view method (`view_transform` returns a `MultiView`)
`views`, one tensor per view at the size its `MultiView` produces (global views at the image size, then
local views), with `image` the first view; and `token_mask` per the method's `num_masks` (none for 0, (B, N)
for 1, (B, num_masks, N) for iBOT's masked global views). Both call ``method(encoder, views or image,
token_mask, step=step, total_steps=steps)``, with the same AdamW groups and warmup-cosine schedule
(`param_groups` + `build_optimizer`, `OptimConfig` defaults: the lr from `scaled_lr(base_lr, B, lr)`, the
warm-up from `warmup_length(steps, warmup_steps, warmup_fraction)`), the same gradient-norm clipping and
the same non-finite check; the online probe is off in both. The Lightning variant fits `PretrainModule` with
a Trainer (no logger, checkpointing, progress bar or model summary); the bare loop does forward, backward,
clipping, optimiser and scheduler step, `zero_grad` and the method's `on_after_optimizer_step` (the EMA
update) by hand and never imports Lightning. Each variant runs in a fresh subprocess (the script re-invokes
itself with `--method <name> --variant`), so peak-memory figures do not mix; variants alternate for
`--repeats` rounds.

Speed is images per second from the median step time (start of one step to the start of the next, the
first `--warmup` steps skipped), best over the rounds. Memory is, on CPU, the process's peak RSS during
training minus its RSS just before: the peak is `VmHWM` of /proc/self/status after resetting it through
/proc/self/clear_refs (Linux), else `resource.getrusage` `ru_maxrss` (whose peak may predate training, e.g.
while open_clip builds and drops its text tower); the line says which. On CUDA it is
`torch.cuda.max_memory_allocated` during training (weights included).

Run (CPU, ViT-tiny/8 at 64 px, B=32, mlm_ema): `.venv/bin/python benchmarks/pretrain_step.py [--method mae]`;
a multi-view method: `.venv/bin/python benchmarks/pretrain_step.py --method dino` (2 global + 6 local views);
every method, one comparison each: `--method all`.
Run (GPU, ViT-B/16 mlm_clip at 224 px with a randomly initialised open_clip ViT-B-16 teacher; nothing is
downloaded): `.venv/bin/python benchmarks/pretrain_step.py --device cuda --precision bf16-mixed
--arch vit_base --patch 16 --image-size 224 --method mlm_clip --batch 64 --steps 40 --warmup 10`.
Prints, per method, a header, one line per variant and one comparison line ending in
`ratio=<lightning/bare images per second>`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, Dataset

from panderm.config import OptimConfig
from panderm.models.encoder import create_encoder
from panderm.models.masking import MaskGenerator
from panderm.pretrain.methods import METHODS, Method, build_method
from panderm.pretrain.objectives import check_finite
from panderm.pretrain.optim import build_optimizer, param_groups, scaled_lr, warmup_length

OBJECTIVES = Path(__file__).resolve().parents[1] / "configs" / "objective"
VARIANTS = ("lightning", "bare")


Batch = dict[str, Any]  # "image" and "token_mask" tensors, "views" a list of tensors


class SameBatch(Dataset):
    """`length` items, each the same pre-built batch (use with ``batch_size=None``)."""

    def __init__(self, batch: Batch, length: int) -> None:
        self.batch, self.length = batch, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Batch:
        return self.batch


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def view_shapes(method: Method, image_size: int) -> list[tuple[int, ...]] | None:
    """Shape (3, h, w) of each view of `method`'s `MultiView` (global views first), from one run on a random
    image; None for a single-view method."""
    views = method.view_transform(image_size)
    if views is None:
        return None
    image = np.random.default_rng(0).integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
    return [tuple(view.shape) for view in views(image=image)["views"]]


def build_batch(args: argparse.Namespace, method: Method, masks: MaskGenerator) -> Batch:
    """A random batch as the pretraining data pipeline delivers it for `method` (see the module docstring)."""
    rng = torch.Generator().manual_seed(args.seed)
    shapes = view_shapes(method, args.image_size)
    if shapes is None:
        batch: Batch = {"image": torch.randn(args.batch, 3, args.image_size, args.image_size, generator=rng)}
    else:
        views = [torch.randn(args.batch, *shape, generator=rng) for shape in shapes]
        batch = {"views": views, "image": views[0]}
    count = method.num_masks
    if count == 1:
        batch["token_mask"] = masks(args.batch, generator=rng)
    elif count > 1:
        batch["token_mask"] = masks(args.batch * count, generator=rng).reshape(args.batch, count, -1)
    return batch


def to_device(batch: Batch, device: torch.device) -> Batch:
    """`batch` on `device`; `image` stays the same tensor as ``views[0]``."""
    out = {key: value.to(device) for key, value in batch.items() if key != "views"}
    if "views" in batch:
        out["views"] = [view.to(device) for view in batch["views"]]
        out["image"] = out["views"][0]
    return out


def build_parts(args: argparse.Namespace) -> dict[str, Any]:
    """Encoder, method and the batch (images or views, `token_mask`) on the device, identically for both
    variants."""
    device = torch.device(args.device)
    objective = OmegaConf.load(OBJECTIVES / f"{args.method}.yaml")
    options = OmegaConf.to_container(objective, resolve=True).get("options") or {}
    seed_all(args.seed)
    encoder = create_encoder(args.arch, args.patch, args.image_size, depth=args.depth)
    if args.method == "mlm_clip":  # random init: nothing is downloaded
        options["teacher"] = {"model_name": args.teacher, "weights": None, "image_size": args.image_size}
    method = build_method(args.method, encoder, **options)
    masks = MaskGenerator(kind=objective.mask_kind, ratio=objective.mask_ratio, grid=encoder.grid_size)
    return {
        "encoder": encoder,
        "method": method,
        "batch": to_device(build_batch(args, method, masks), device),
        "optim": OptimConfig(),
        "device": device,
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise OSError(f"no {field} in /proc/self/status")


def memory_start(device: torch.device) -> tuple[str, float]:
    """Start a peak-memory measurement: (how it is measured, baseline in MiB)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "peak allocated (torch.cuda.max_memory_allocated)", 0.0
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return "peak RSS growth (VmHWM reset via clear_refs)", _status_mib("VmRSS")
    except OSError:
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return "peak RSS growth (getrusage ru_maxrss)", maxrss


def memory_peak(device: torch.device, start: tuple[str, float]) -> dict[str, Any]:
    how, base = start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    elif "VmHWM" in how:
        peak = _status_mib("VmHWM") - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"memory": peak, "memory_how": how}


def run_lightning(args: argparse.Namespace, parts: dict[str, Any]) -> dict[str, Any]:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from panderm.pretrain.module import PretrainModule

    logging.getLogger("lightning").setLevel(logging.ERROR)  # "GPU available: ..." and tips
    device = parts["device"]

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.marks: list[float] = []
            self.loss: torch.Tensor | None = None

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, batch_idx: int) -> None:
            sync(device)
            self.marks.append(time.perf_counter())

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.loss = outputs["loss"].detach() if isinstance(outputs, dict) else outputs.detach()
            if batch_idx == args.steps - 1:
                sync(device)
                self.marks.append(time.perf_counter())

    optim = parts["optim"]
    module = PretrainModule(
        parts["encoder"],
        parts["method"],
        lr=optim.lr,
        base_lr=optim.base_lr,
        batch_size=args.batch,
        weight_decay=optim.weight_decay,
        layer_decay=optim.layer_decay,
        warmup_steps=optim.warmup_steps,
        warmup_fraction=optim.warmup_fraction,
        total_steps=args.steps,
        betas=tuple(optim.betas),
        num_classes=None,
    )
    loader = DataLoader(SameBatch(parts["batch"], args.steps), batch_size=None)
    timer = StepTimer()
    start = memory_start(device)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="gpu" if device.type == "cuda" else "cpu",
            devices=1,
            precision=args.precision,
            max_steps=args.steps,
            gradient_clip_val=optim.clip_grad,
            callbacks=[timer],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=tmp,
        )
        trainer.fit(module, train_dataloaders=loader)
    return {"marks": timer.marks, "loss": float(timer.loss), **memory_peak(device, start)}


def run_bare(args: argparse.Namespace, parts: dict[str, Any]) -> dict[str, Any]:
    encoder, method, device = parts["encoder"], parts["method"], parts["device"]
    optim = parts["optim"]
    loader = DataLoader(SameBatch(parts["batch"], args.steps), batch_size=None)
    start = memory_start(device)
    # what PretrainModule.__init__ and configure_optimizers do, without the probe
    encoder.mask_token.requires_grad_(method.mask_mode == "replace")
    encoder.to(device).train()
    method.to(device).train()
    heads = [(f"method.{name}", param) for name, param in method.named_parameters()]
    lr = scaled_lr(optim.base_lr, args.batch, optim.lr)  # one process, no accumulation
    groups = param_groups(
        encoder, heads, lr=lr, weight_decay=optim.weight_decay, layer_decay=optim.layer_decay
    )
    optimizer, schedule = build_optimizer(
        groups,
        total_steps=args.steps,
        warmup_steps=warmup_length(args.steps, optim.warmup_steps, optim.warmup_fraction),
        betas=tuple(optim.betas),
    )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    bf16 = args.precision == "bf16-mixed"
    marks: list[float] = []
    loss = torch.zeros(())
    for step, batch in enumerate(loader):
        sync(device)
        marks.append(time.perf_counter())
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = method(
                encoder,
                batch.get("views", batch["image"]),
                batch.get("token_mask"),
                step=step,
                total_steps=args.steps,
            )
            loss = out["loss"].float()
            check_finite(loss, step)
        loss.backward()
        if optim.clip_grad:
            torch.nn.utils.clip_grad_norm_(params, optim.clip_grad)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        method.on_after_optimizer_step(encoder, step, args.steps)
    sync(device)
    marks.append(time.perf_counter())
    return {"marks": marks, "loss": float(loss.detach()), **memory_peak(device, start)}


def run_variant(args: argparse.Namespace) -> None:
    """Child process: train one variant and print its result as one JSON line."""
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("panderm").setLevel(logging.ERROR)  # the random-teacher warning
    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    parts = build_parts(args)
    result = (run_lightning if args.variant == "lightning" else run_bare)(args, parts)
    steps = np.diff(result.pop("marks"))[args.warmup :]
    result["median_step_s"] = statistics.median(steps.tolist())
    result["timed_steps"] = len(steps)
    print(json.dumps(result))


def spawn(method: str, variant: str) -> dict[str, Any]:
    # argparse keeps the last --method, so this overrides "all"
    cmd = [sys.executable, __file__, *sys.argv[1:], "--method", method, "--variant", variant]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        sys.exit(f"{variant} variant failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--arch", default="vit_tiny")
    parser.add_argument("--patch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--method", default="mlm_ema", choices=[*METHODS, "all"], help="a pretraining method, or all of them"
    )
    parser.add_argument("--teacher", default="ViT-B-16", help="open_clip model for mlm_clip (random init)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=4, help="steps left out of the timing")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (lightning, bare) subprocesses")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads per variant (0: torch's default); 1 keeps timings stable when another process "
        "shares the cores, where spinning OpenMP threads can slow both variants several-fold",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps - args.warmup < 3:
        parser.error("--steps must exceed --warmup by at least 3")
    if args.variant:
        run_variant(args)
        return
    for method in METHODS if args.method == "all" else [args.method]:
        compare(args, method)


def compare(args: argparse.Namespace, method: str) -> None:
    """Alternate the variants' subprocesses for `method` and print the header, variant and ratio lines."""
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            runs[variant].append(spawn(method, variant))
    speed: dict[str, float] = {}
    threads = f", {args.threads or 'default'} thread(s)" if args.device == "cpu" else ""
    print(
        f"{method}, {args.arch}/{args.patch} at {args.image_size} px, B={args.batch}, {args.device} "
        f"{args.precision}{threads}: {runs['bare'][0]['timed_steps']} timed steps per run, images/s from "
        f"the median step time, best of {args.repeats} runs"
    )
    for variant in VARIANTS:
        best = min(runs[variant], key=lambda r: r["median_step_s"])
        speed[variant] = args.batch / best["median_step_s"]
        mem = max(r["memory"] for r in runs[variant])
        print(
            f"{variant}: {speed[variant]:.0f} img/s ({1000 * best['median_step_s']:.1f} ms/step), "
            f"{best['memory_how']} {mem:.0f} MiB, final loss {best['loss']:.7g}"
        )
    ratio = speed["lightning"] / speed["bare"]
    print(
        f"{method}: Lightning Trainer vs bare loop: {speed['lightning']:.0f} img/s ratio={ratio:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
