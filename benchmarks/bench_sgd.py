"""The RIB group's SGD update, four ways, side by side: the weights of G images' heads.

    python benchmarks/bench_sgd.py [--device cpu|cuda|all] [--backbone resnet50] [--groups 1 4]
                                   [--min-run-time S] [--json PATH]

The weights are those RIB adapts (stages 3 and 4 with their fixed-BN affine parameters and the
classifier, 20 classes), one copy per image, with their gradients. Per G it times:
    loop      sgd_update_ per image (torch.optim.SGD's update, one parameter at a time)
    foreach   the engine's eager update: sgd_update_foreach_ (the CPU path, read at once)
    masked    sgd_update_foreach_ with masks (the CUDA eager path: stops decided on the device as masks)
    slots     WeightSlots.step: the gradients copied into the [G, P] slots, the learning rates and
              flags sent to the device, and ops.sgd_step_ (the cuda_graphs path)
    kernel    ops.sgd_step_ alone on the [G, P] slots
Every way is first checked to give the same weights as ``foreach`` bit for bit. Ratios are
``masked`` time over the column's (x = how many times faster). The random gradients and momentum
are drawn on the device (a ResNet-50 head is ~23 M values per image). Each G's row is printed
(``row ...``) as soon as it is measured, with the device, the operators' backend, torch and CUDA,
and ``--json`` is rewritten after each row.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import warnings
from pathlib import Path

import torch
import torch.utils.benchmark as tb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from rib_ext import ops  # noqa: E402
from rib_ext.models import build_cam_net  # noqa: E402
from rib_ext.rib.head import CAMHead  # noqa: E402
from rib_ext.rib.slots import WeightSlots  # noqa: E402
from rib_ext.sgd import sgd_update_, sgd_update_foreach_  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_facts, when loaded by path
from bench_facts import print_row, run_facts, write_json  # noqa: E402

WD, MOMENTUM, LR, CLASSIFIER_MULT = 1e-4, 0.9, 0.01, 10.0
WAYS = ["loop", "foreach", "masked", "slots", "kernel"]


def head_weights(backbone: str, device) -> tuple[list[torch.Tensor], list[float]]:
    """θ0's trainable head parameters and their learning-rate multipliers, as the engine has them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_cam_net(backbone, 20, random_init=True)
    head = CAMHead(model)
    named = [(n, p.detach().to(device)) for n, p in head.named_parameters() if p.requires_grad]
    return [p for _, p in named], [CLASSIFIER_MULT if n.startswith("classifier.") else 1.0 for n, _ in named]


class Case:
    """G images' weights, gradients and buffers (after one step, so every way takes the momentum
    branch), laid out for each way."""

    def __init__(self, base, mults, g, device):
        gen = torch.Generator(device=device).manual_seed(0)
        self.base, self.g, self.n = base, g, len(base)
        self.grads = [torch.randn(p.shape, generator=gen, device=device) for _ in range(g) for p in base]
        self.lrs = [LR * m * 0.9 for _ in range(g) for m in mults]
        self.factors = [0.9] * g
        self.rates = [(LR * mults[0] * 0.9, LR * mults[-1] * 0.9)] * g
        self.masks = [torch.ones((), dtype=torch.bool, device=device)] * (g * self.n)
        self.slots = WeightSlots(base, mults, g)
        for _ in range(g):
            self.slots.take()
        self.slots.bufs.copy_(torch.randn(self.slots.bufs.shape, generator=gen, device=device))
        self.params = [v for s in range(g) for v in self.slots.leaves[s]]
        self.bufs = [b.clone() for s in range(g) for b in self.slots.views(self.slots.bufs, s, base)]
        self.start = self.slots.params.clone(), self.slots.bufs.clone(), [b.clone() for b in self.bufs]
        self.kernel_args = None

    def reset(self):
        self.slots.params.copy_(self.start[0])
        self.slots.bufs.copy_(self.start[1])
        torch._foreach_copy_(self.bufs, self.start[2])

    def run(self, way):
        with torch.no_grad():
            if way == "loop":
                for s in range(self.g):
                    part = slice(s * self.n, (s + 1) * self.n)
                    sgd_update_(self.params[part], self.grads[part], self.bufs[part], self.lrs[part], WD, MOMENTUM)
            elif way == "foreach":
                sgd_update_foreach_(self.params, self.grads, self.bufs, self.lrs, WD, MOMENTUM)
            elif way == "masked":
                sgd_update_foreach_(self.params, self.grads, self.bufs, self.lrs, WD, MOMENTUM, self.masks)
            elif way == "slots":
                self.slots.step(list(range(self.g)), self.grads, [None] * self.g, LR, self.factors,
                                [False] * self.g, WD, MOMENTUM)
            else:
                if self.kernel_args is None:
                    sl = self.slots
                    dev = sl.params.device
                    self.kernel_args = (torch.tensor(self.rates, dtype=sl.params.dtype, device=dev),
                                        torch.ones(self.g, dtype=torch.bool, device=dev),
                                        torch.zeros(self.g, dtype=torch.bool, device=dev))
                lrs, go, first = self.kernel_args
                ops.sgd_step_(self.slots.params, self.slots.bufs, self.slots.grads, lrs, go, first,
                              self.slots.split, WD, MOMENTUM)

    def weights(self):
        return self.slots.params.clone()


def bench(base, mults, g, device, min_run_time) -> dict:
    case = Case(base, mults, g, device)
    case.run("slots")  # the slots' gradients filled for "kernel"
    results = {}
    for way in WAYS:
        case.reset()
        case.run(way)
        results[way] = case.weights()
    for way in WAYS:  # the same weights, or the timing means nothing
        if not torch.equal(results[way], results["foreach"]):
            raise AssertionError(f"{way} differs from foreach")
    times = {}
    for way in WAYS:
        case.reset()
        timer = tb.Timer(stmt="run(way)", globals={"run": case.run, "way": way})
        times[way] = timer.blocked_autorange(min_run_time=min_run_time).median
    return {"group_size": g, "parameters": case.slots.params.shape[1], "seconds": times}


def format_table(device, rows) -> str:
    lines = [f"### {device}",
             "| G | parameters per image | " + " | ".join(f"{w} ms" for w in WAYS)
             + " | " + " | ".join(f"{w} vs masked" for w in WAYS if w != "masked") + " |",
             "|---:|---:|" + "---:|" * (2 * len(WAYS) - 1)]
    for r in rows:
        t = r["seconds"]
        lines.append(f"| {r['group_size']} | {r['parameters']:,} | "
                     + " | ".join(f"{t[w] * 1e3:.2f}" for w in WAYS) + " | "
                     + " | ".join(f"{t['masked'] / t[w]:.2f}x" for w in WAYS if w != "masked") + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="all", choices=["cpu", "cuda", "all"])
    p.add_argument("--backbone", default="resnet50", help="resnet50 (VOC), resnet18, resnet_tiny")
    p.add_argument("--groups", type=int, nargs="+", default=[1, 4], help="group sizes G")
    p.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    p.add_argument("--json", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        print("no CUDA device: CUDA rows skipped")
        devices = [d for d in devices if d != "cuda"]
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "backbone": args.backbone,
            "gpu": torch.cuda.get_device_name() if "cuda" in devices else None,
            "backends": {d: ops.backend("sgd_step_", d) for d in devices}}
    print(", ".join(f"{k} {v}" for k, v in info.items()))
    doc = {"info": info, "devices": {}}
    for device in devices:
        base, mults = head_weights(args.backbone, device)
        facts = run_facts(device)
        rows = doc["devices"][device] = []
        for g in args.groups:
            rows.append({**bench(base, mults, g, device, args.min_run_time), **facts})
            t = rows[-1]["seconds"]
            print_row(f"sgd {device} G={g}", ", ".join(f"{w} {t[w] * 1e3:.2f} ms" for w in WAYS)
                      + f"; backend {facts['backend']}")
            write_json(args.json, doc)
        print(format_table(device, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
