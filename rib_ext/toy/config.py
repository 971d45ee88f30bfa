"""Settings of the toy experiment (paper Sec. 3.1, Figures 1 and 2), in one place.

Values the paper states are marked "paper"; the rest are the toy's own choices (the paper gives
no architecture, optimiser or RIB step size for the toy), picked so a run takes seconds on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple


@dataclass
class ToyConfig:
    # -- data ---------------------------------------------------------------------------------
    mnist_dir: Optional[str] = None  # MNIST idx files; None: scikit-learn's bundled 8x8 digits
    classes: Tuple[int, int] = (2, 8)  # paper; output 0 is '2', output 1 is '8'
    shape_fraction: float = 0.1  # paper: 10% of the images carry a shape
    canvas: int = 32  # scikit-learn digits are pasted into a canvas this big (MNIST stays 28)
    digit_box: int = 20  # MNIST fits its digits into a 20x20 box; the 8x8 digits are upsampled to it
    copies: int = 3  # placements per scikit-learn digit: 351 digits -> 1053 images, ~105 shapes
    mnist_images: int = 2000  # MNIST '2'/'8' images drawn per seed (of ~11.8k)
    circle_radius: float = 3.0  # the circle on '2' (29 pixels)
    square_side: int = 6  # the square on '8' (36 pixels)
    shape_max_overlap: float = 0.1  # at most this fraction of the shape may lie on the digit
    digit_threshold: float = 0.5  # R_D: digit intensity (in [0, 1]) above this

    # -- classifier: five 3x3 convs (ReLU) -> global average pooling -> linear -> 2 logits -----
    channels: Tuple[int, ...] = (8, 8, 16, 16, 16)
    pool_after: Tuple[int, ...] = (1, 3)  # 2x2 average pooling after T_1 and T_3: 32 -> 16 -> 8
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-2  # Adam, decayed linearly to 0
    weight_decay: float = 1e-4

    # -- gradient maps ------------------------------------------------------------------------
    hgr_threshold: float = 0.3  # paper
    eval_images: int = 100  # paper: HGR averaged over 100 images (here: ones carrying a shape)

    # -- RIB on the toy (paper Fig. 2b) ---------------------------------------------------------
    rib_steps: int = 10  # paper: K = 10
    rib_batch: int = 20  # paper: B = 20 (the image plus 19 others, redrawn every step)
    # Plain SGD, theta_k = theta_{k-1} - lr * grad (the paper's update). The paper's 8e-6 is for
    # ResNet-50 on VOC and does not transfer; on the toy (m = 600, seeds 0-2) 3e-5 barely moves
    # the maps (own logit x2 over K steps) and 3e-4 blows the logit up x1000+; 1e-4 lies between.
    rib_lr: float = 1e-4
    rib_margin: float = 600.0  # paper's m; far above the toy's logits (~5-10 after training)
    rib_grid: Tuple[Tuple[float, float], ...] = ()  # extra (lr, m) pairs rerun on the same models

    # -- verdicts -------------------------------------------------------------------------------
    rise_min: float = 0.05  # "HGR rises": gain over the RIB run of at least this much
    flat_tol: float = 0.05  # "stays roughly flat": |change| of R_BG at most this much

    # -- run --------------------------------------------------------------------------------------
    seeds: Tuple[int, ...] = (0, 1, 2)
    out: str = "rib_ext_out/toy"
    # Seeds run in parallel processes of one torch thread each: on a small shared CPU one
    # single-threaded process trained ~10x faster than one with two threads (OpenMP threads spin
    # waiting on each other around convolutions this small).
    workers: int = 2
    threads_per_worker: int = 1
    examples: int = 4  # images in the gradient-map grid
    write_files: bool = True

    @property
    def num_layers(self) -> int:
        return len(self.channels)
