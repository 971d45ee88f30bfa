"""Pipeline stages, one module each, named after the stage (``python -m rib_ext.pipeline --help``).

Data flows one way: dataset -> train_cam (classifier) -> make_cam / rib (maps) -> eval_seed -> crf
-> ir_label -> train_irn -> make_sem_seg (+ saliency) -> eval_mask -> visualize -> segment.

The one stage style: a stage module is the shell between the run and the work. It names the
settings and inputs its outputs depend on, takes its folders, datasets and policies from the run
context, calls the one function of a lower package that does the work loop (and owns its
per-image skip, progress and writing), logs, and returns the summary. The work lives below, where
other callers (the ablation, the benchmarks, a notebook) reach it without a run:

    stage          its work
    train_cam      rib_ext.cam.train.train_cam
    make_cam       rib_ext.cam.maps.make_cam
    rib            rib_ext.rib.run.adapt_dataset
    eval_seed      rib_ext.evaluation.eval_seed
    crf            rib_ext.crf.refine_seeds
    ir_label       rib_ext.irn.ir_label_stage
    train_irn      rib_ext.irn.train_irn_stage
    make_sem_seg   rib_ext.irn.make_sem_seg_stage (+ apply_saliency)
    eval_mask      rib_ext.irn.eval_mask_stage
    visualize      rib_ext.figures.visualize_run
    segment        rib_ext.segment.segment_stage

Every stage module has the same shape::

    UPSTREAM = ("make_sem_seg", "data:eval", "truth:eval")
                                # stages whose outputs it reads, dataset lists whose images and
                                # labels ("data:train|eval|val") or ground-truth masks
                                # ("truth:...") it reads: its provenance inputs
    def settings(cfg: PipelineConfig) -> dict  # the settings that shape its outputs
    def run(ctx: RunContext, cfg: PipelineConfig) -> dict   # does the work, returns the summary

and, where the stage takes a value from another stage's result (crf's threshold: eval_seed's
best one), ``RESULTS_FROM = ("eval_seed",)`` and ``derived(ctx, cfg, set) -> dict``, the values
for one map set: recorded in its provenance and checked before it runs, so its outputs always
follow the result they were derived from.

``ctx`` (:class:`rib_ext.stages.context.RunContext`) gives the output layout, the datasets, the
map sets, the rank, the device, logging and writing. Adding a stage is one module here and one
line in :data:`rib_ext.stages.registry.REGISTRY` (tests/test_layers.py checks both). Stages never
import each other: what two of them share lives in ``common``, ``context`` or ``registry``. Every
stage writes atomically and skips work whose outputs already exist and are whole, so a rerun
resumes.
"""
