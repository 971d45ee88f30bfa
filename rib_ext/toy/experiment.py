"""One seed: data -> BCE classifier -> gradient maps per layer -> RIB; then seeds aggregated and
the paper's two toy claims checked against the numbers."""
from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from rib_ext.toy.config import ToyConfig
from rib_ext.toy.data import make_toy_data
from rib_ext.toy.gradients import gradient_maps, normalise_maps, region_hgr
from rib_ext.toy.rib import rib_g6_maps
from rib_ext.toy.train import train_classifier

REGIONS = ("D", "ND", "BG")


def layer_names(num_layers: int) -> list[str]:
    return [f"G{l}" for l in range(1, num_layers + 1)] + [f"G{num_layers + 1} (logit)"]


def _mean_over_images(per_region: dict) -> dict:
    return {k: [round(float(v), 4) for v in per_region[k].nanmean(dim=-1)] for k in REGIONS}


def _example_rows(labels: torch.Tensor, count: int) -> torch.Tensor:
    """Positions of up to ``count`` evaluated images, classes alternating."""
    per_class = [torch.nonzero(labels == c).flatten() for c in (0, 1)]
    rows = [int(p[i]) for i in range(max(len(p) for p in per_class)) for p in per_class if i < len(p)]
    return torch.tensor(rows[:count], dtype=torch.long)


@torch.no_grad()
def _own_logits(model, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(x).gather(1, labels.view(-1, 1))[:, 0]


def _rib_run(model, data, idx, regions, cfg: ToyConfig, seed: int):
    """(HGR per region per iteration, mean own logit per iteration, normalised maps) of RIB."""
    rib = rib_g6_maps(model, data, idx, cfg, seed)
    maps = normalise_maps(rib["g6"])
    logit = [round(float(v), 4) for v in rib["logit"].mean(dim=1)]
    return _mean_over_images(region_hgr(maps, regions, cfg.hgr_threshold)), logit, maps


def run_seed(cfg: ToyConfig, seed: int) -> tuple[dict, dict]:
    """(summary, example maps) of one seed; HGR are averaged over the shape-carrying eval images."""
    t0 = time.perf_counter()
    data = make_toy_data(cfg, seed)
    model, train_stats = train_classifier(cfg, data, seed)
    idx = data.eval_index
    x, labels = data.images[idx], data.labels[idx]
    regions = {k: data.regions[k][idx] for k in REGIONS}
    layer_maps = normalise_maps(gradient_maps(model, x, labels))
    rib_hgr, rib_logit, rib_maps = _rib_run(model, data, idx, regions, cfg, seed)
    grid = []
    for lr, m in cfg.rib_grid:  # the same trained model under other RIB settings (--rib-grid)
        other = dataclasses.replace(cfg, rib_lr=lr, rib_margin=m)
        hgr_k, logit_k, _ = _rib_run(model, data, idx, regions, other, seed)
        grid.append({"rib_hgr": hgr_k, "rib_own_logit_mean": logit_k})
    # How much the shape itself moves the logit: tells whether the classifier uses R_ND at all.
    shape_gain = _own_logits(model, x, labels) - _own_logits(model, data.clean[idx], labels)
    summary = {
        "seed": seed,
        "images": len(data),
        "shape_images": int(data.has_shape.sum()),
        "eval_images": len(idx),
        "train": {k: round(v, 4) for k, v in train_stats.items()},
        "own_logit_mean": rib_logit[0],
        "shape_logit_gain_mean": round(float(shape_gain.mean()), 4),
        "layer_hgr": _mean_over_images(region_hgr(layer_maps, regions, cfg.hgr_threshold)),
        "rib_hgr": rib_hgr,
        "rib_own_logit_mean": rib_logit,
        "rib_grid": grid,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    ex = _example_rows(labels, cfg.examples)
    examples = {"images": x[ex, 0], "labels": labels[ex], "nd": regions["ND"][ex],
                "layer_maps": layer_maps[:, ex], "rib_maps": rib_maps[:, ex]}
    return summary, examples


def mean_std(per_seed: list[dict]) -> dict:
    """{region: {mean, std}} over seeds of per-seed {region: values} (std with ddof=1; 0 for a
    single seed)."""
    out = {}
    for r in REGIONS:
        a = np.array([s[r] for s in per_seed], dtype=np.float64)
        std = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros(a.shape[1])
        out[r] = {"mean": np.round(a.mean(axis=0), 4).tolist(), "std": np.round(std, 4).tolist()}
    return out


def _drops(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v[:-1] - v[1:]


def verdict_final_layer(layer_hgr: dict, per_seed: list[dict], names: list[str]) -> dict:
    """Claim 1: the drop of HGR(R_ND) between consecutive maps is largest at G_L -> G_{L+1}."""
    drops = _drops(layer_hgr["ND"]["mean"])
    holds = bool(np.argmax(drops) == len(drops) - 1 and drops[-1] > 0)
    seeds = sum(int(np.argmax(_drops(s["layer_hgr"]["ND"])) == len(drops) - 1) for s in per_seed)
    steps = ", ".join(f"{names[i]}->{names[i + 1].split()[0]} {d:+.3f}" for i, d in enumerate(drops))
    values = ", ".join(f"{n.split()[0]} {v:.3f}" for n, v in zip(names, layer_hgr["ND"]["mean"]))
    text = (f"Claim 1 (HGR of R_ND drops most at the final layer, {names[-2]} -> logit): "
            f"{'holds' if holds else 'does not hold'}. HGR(R_ND): {values}. Drops: {steps}; "
            f"the final-layer drop is the largest in {seeds}/{len(per_seed)} seeds.")
    return {"holds": holds, "nd_drops": np.round(drops, 4).tolist(), "seeds_largest_final": seeds,
            "text": text}


def verdict_rib(rib_hgr: dict, per_seed: list[dict], cfg: ToyConfig) -> dict:
    """Claim 2: over the RIB iterations HGR(R_D) and HGR(R_ND) rise, HGR(R_BG) stays flat.
    ``per_seed``: each seed's {region: HGR per iteration}."""
    change = {r: rib_hgr[r]["mean"][-1] - rib_hgr[r]["mean"][0] for r in REGIONS}
    per_seed_change = {r: np.array([s[r][-1] - s[r][0] for s in per_seed]) for r in REGIONS}
    rises = {r: change[r] >= cfg.rise_min for r in ("D", "ND")}
    flat = abs(change["BG"]) <= cfg.flat_tol
    holds = bool(rises["D"] and rises["ND"] and flat)
    parts = []
    for r in REGIONS:
        m = rib_hgr[r]["mean"]
        sd = per_seed_change[r].std(ddof=1) if len(per_seed) > 1 else 0.0
        parts.append(f"R_{r} {m[0]:.3f} -> {m[-1]:.3f} ({change[r]:+.3f} ± {sd:.3f})")
    failed = [f"R_{r} does not rise by >= {cfg.rise_min}" for r in ("D", "ND") if not rises[r]]
    if not flat:
        failed.append(f"R_BG moves by more than {cfg.flat_tol}")
    text = (f"Claim 2 (during RIB, HGR of R_D and R_ND rise while R_BG stays roughly flat): "
            f"{'holds' if holds else 'does not hold'}. Over K={cfg.rib_steps} iterations: "
            + "; ".join(parts) + ("." if holds else f". ({'; '.join(failed)})"))
    return {"holds": holds, "change": {r: round(float(v), 4) for r, v in change.items()},
            "d_rises": bool(rises["D"]), "nd_rises": bool(rises["ND"]), "bg_flat": bool(flat),
            "text": text}


def grid_entry(cfg: ToyConfig, i: int, per_seed: list[dict]) -> dict:
    """Claim 2 under the i-th extra (lr, margin) of ``cfg.rib_grid``, over seeds."""
    lr, margin = cfg.rib_grid[i]
    runs = [s["rib_grid"][i] for s in per_seed]
    hgr_stats = mean_std([r["rib_hgr"] for r in runs])
    logits = np.mean([r["rib_own_logit_mean"] for r in runs], axis=0)
    return {"rib_lr": lr, "rib_margin": margin, "rib_hgr": hgr_stats,
            "own_logit_mean": np.round(logits, 4).tolist(),
            "verdict": verdict_rib(hgr_stats, [r["rib_hgr"] for r in runs],
                                   dataclasses.replace(cfg, rib_lr=lr, rib_margin=margin))}


@contextlib.contextmanager
def torch_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_seeds(cfg: ToyConfig):
    """Yield (summary, examples) per seed, in seed order; parallel when ``cfg.workers`` > 1."""
    workers = min(cfg.workers, len(cfg.seeds))
    if workers <= 1:
        with torch_threads(cfg.threads_per_worker):
            for seed in cfg.seeds:
                yield run_seed(cfg, seed)
        return
    # spawn, not fork: a forked child inherits torch's OpenMP state and can hang in it.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=torch.set_num_threads,
                             initargs=(cfg.threads_per_worker,)) as pool:
        for future in [pool.submit(run_seed, cfg, seed) for seed in cfg.seeds]:
            yield future.result()


def run_toy(cfg: ToyConfig | None = None, log=None) -> dict:
    """Every seed of the toy experiment, aggregated, with verdicts; writes the outputs to
    ``cfg.out`` when ``cfg.write_files``. Returns the results dict (what results.json holds)."""
    cfg = cfg or ToyConfig()
    t0 = time.perf_counter()
    per_seed, examples = [], None
    for summary, ex in run_seeds(cfg):
        per_seed.append(summary)
        examples = examples if examples is not None else ex
        if log:
            log(f"seed {summary['seed']}: {summary['seconds']:.1f}s, train accuracy "
                f"{summary['train']['train_accuracy']:.3f}")
    names = layer_names(cfg.num_layers)
    layer_hgr = mean_std([s["layer_hgr"] for s in per_seed])
    rib_hgr = mean_std([s["rib_hgr"] for s in per_seed])
    results = {
        "config": dataclasses.asdict(cfg),
        "data_source": "mnist" if cfg.mnist_dir else "sklearn-digits",
        "layers": names,
        "layer_hgr": layer_hgr,
        "rib_iterations": list(range(cfg.rib_steps + 1)),
        "rib_hgr": rib_hgr,
        "verdicts": {"final_layer_drop": verdict_final_layer(layer_hgr, per_seed, names),
                     "rib_rise": verdict_rib(rib_hgr, [s["rib_hgr"] for s in per_seed], cfg)},
        "rib_grid": [grid_entry(cfg, i, per_seed) for i in range(len(cfg.rib_grid))],
        "per_seed": per_seed,
    }
    if cfg.write_files:
        from rib_ext.toy import report  # matplotlib only when files are wanted

        results["files"] = report.write_figures(results, examples, cfg.out) + list(report.TABLES)
    results["elapsed_s"] = round(time.perf_counter() - t0, 2)
    if cfg.write_files:
        report.write_tables(results, cfg.out)
    return results
