"""The toy's outputs: markdown table, JSON, the two HGR plots (Fig. 1c, Fig. 2b) and a grid of
example gradient maps (Fig. 1b / 2a)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rib_ext.io import save_figure, save_json, save_text  # noqa: E402

TABLES = ("table.md", "results.json")
FIGURES = ("fig1c_hgr_per_layer.png", "fig2b_hgr_rib.png", "gradient_maps.png")
_STYLE = {"D": ("R_D (digit)", "tab:blue"), "ND": ("R_ND (added shape)", "tab:red"),
          "BG": ("R_BG (background)", "tab:gray")}


def _pm(stats: dict, i: int) -> str:
    return f"{stats['mean'][i]:.3f} ± {stats['std'][i]:.3f}"


def _table(row_names, stats: dict, extra: dict | None = None) -> list[str]:
    extra = extra or {}
    head = ["", *[_STYLE[r][0] for r in stats], *extra]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, name in enumerate(row_names):
        cells = [str(name), *[_pm(s, i) for s in stats.values()], *[v[i] for v in extra.values()]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict) -> str:
    cfg = results["config"]
    seeds = results["per_seed"]
    n_eval = seeds[0]["eval_images"]
    logits = [sum(s["rib_own_logit_mean"][k] for s in seeds) / len(seeds)
              for k in results["rib_iterations"]]
    out = [
        "# Toy experiment (RIB paper, Sec. 3.1, Figures 1c and 2b)",
        "",
        f"Data: {results['data_source']}, digits {cfg['classes'][0]} vs {cfg['classes'][1]}, "
        f"{seeds[0]['images']} images, {seeds[0]['shape_images']} with a shape; HGR averaged over "
        f"{n_eval} shape-carrying images per seed, then mean ± std (ddof=1) over seeds "
        f"{list(cfg['seeds'])}. Maps: |gradient| / its per-image max; HGR = fraction of the "
        f"region's pixels above {cfg['hgr_threshold']}. G1..G{len(results['layers']) - 1}: "
        "gradient of the sum of the conv layer's output after ReLU; last row: gradient of the "
        "raw logit of the image's class.",
        "",
        "## Figure 1c: HGR per layer",
        "",
        *_table(results["layers"], results["layer_hgr"]),
        "",
        f"## Figure 2b: HGR of the logit's map over RIB iterations "
        f"(K={cfg['rib_steps']}, B={cfg['rib_batch']}, lr={cfg['rib_lr']:g}, m={cfg['rib_margin']:g})",
        "",
        *_table(results["rib_iterations"], results["rib_hgr"],
                {"own-class logit (mean)": [f"{v:.2f}" for v in logits]}),
        "",
        *_grid_section(results),
        "## Per seed",
        "",
        "| seed | train accuracy | accuracy on shape images | own-class logit "
        "| logit gain from the shape | seconds |",
        "|---|---|---|---|---|---|",
        *[f"| {s['seed']} | {s['train']['train_accuracy']:.3f} | "
          f"{s['train']['shape_image_accuracy']:.3f} | {s['own_logit_mean']:.2f} | "
          f"{s['shape_logit_gain_mean']:+.2f} | {s['seconds']:.1f} |" for s in seeds],
        "",
        "## Verdicts",
        "",
        *[f"- {v['text']}" for v in results["verdicts"].values()],
        "",
    ]
    if "elapsed_s" in results:
        out.append(f"Elapsed: {results['elapsed_s']:.1f} s.\n")
    return "\n".join(out)


def _grid_section(results: dict) -> list[str]:
    """Claim 2 under the extra RIB settings of --rib-grid (same trained models)."""
    if not results.get("rib_grid"):
        return []
    lines = ["## RIB sensitivity (same trained models, other lr / margin)", "",
             "| lr | m | R_D change | R_ND change | R_BG change | own logit start -> end | claim 2 |",
             "|---|---|---|---|---|---|---|"]
    for g in results["rib_grid"]:
        v = g["verdict"]
        lines.append(f"| {g['rib_lr']:g} | {g['rib_margin']:g} | "
                     + " | ".join(f"{v['change'][r]:+.3f}" for r in _STYLE)
                     + f" | {g['own_logit_mean'][0]:.1f} -> {g['own_logit_mean'][-1]:.1f} | "
                     f"{'holds' if v['holds'] else 'does not hold'} |")
    return lines + [""]


def _save(fig, path: Path) -> None:
    save_figure(path, fig, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _hgr_plot(x, labels, stats: dict, xlabel: str, title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for r, s in stats.items():
        name, color = _STYLE[r]
        ax.errorbar(x, s["mean"], yerr=s["std"], label=name, color=color, marker="o", capsize=3)
    ax.set_xticks(x, labels)
    ax.set(xlabel=xlabel, ylabel="HGR", title=title, ylim=(0, 1.02))
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _examples_plot(ex: dict, layers: list[str], path: Path) -> None:
    """One row per image: the image, G_1..G_L, the logit's map before RIB and after K steps; the
    added shape is outlined in red (the paper's red boxes)."""
    cols = ["image", *[n.split()[0] for n in layers], f"{layers[-1].split()[0]} after RIB"]
    maps = [*ex["layer_maps"], ex["rib_maps"][-1]]
    rows = len(ex["images"])
    fig, axes = plt.subplots(rows, len(cols), figsize=(1.3 * len(cols), 1.4 * rows), squeeze=False)
    for i in range(rows):
        panels = [ex["images"][i], *[m[i] for m in maps]]
        for j, (ax, panel) in enumerate(zip(axes[i], panels)):
            ax.imshow(panel.numpy(), cmap="gray" if j == 0 else "hot", vmin=0, vmax=1)
            ax.contour(ex["nd"][i].float().numpy(), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
    _save(fig, path)


def write_figures(results: dict, examples: dict, out) -> list[str]:
    out = Path(out)
    layers = results["layers"]
    _hgr_plot(list(range(1, len(layers) + 1)), [n.split()[0] for n in layers],
              results["layer_hgr"], "gradient map", "HGR per layer (Fig. 1c)",
              out / FIGURES[0])
    _hgr_plot(results["rib_iterations"], results["rib_iterations"], results["rib_hgr"],
              "RIB iteration", "HGR of the logit's map during RIB (Fig. 2b)", out / FIGURES[1])
    _examples_plot(examples, layers, out / FIGURES[2])
    return list(FIGURES)


def write_tables(results: dict, out) -> None:
    out = Path(out)
    save_text(out / TABLES[0], markdown(results))
    save_json(out / TABLES[1], results)
