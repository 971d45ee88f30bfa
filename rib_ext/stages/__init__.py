"""Pipeline stages, one module each, named after the stage (``python -m rib_ext.pipeline --help``).

Data flows one way: dataset -> train_cam (classifier) -> make_cam / rib (maps) -> eval_seed -> crf
-> ir_label -> train_irn -> make_sem_seg (+ saliency) -> eval_mask -> segment.

Every stage module has the same shape, and stays thin (the maths lives in rib/, irn/, segment/,
crf.py, evaluation.py):

    UPSTREAM = ("make_sem_seg", "data:eval")   # stages and dataset lists ("data:train|eval|val")
                                               # whose outputs it reads: its provenance inputs
    def settings(cfg: PipelineConfig) -> dict  # the settings that shape its outputs
    def run(ctx: RunContext, cfg: PipelineConfig) -> dict   # does the work, returns the summary

``ctx`` (:class:`rib_ext.stages.context.RunContext`) gives the output layout, the datasets, the
map sets, the rank, the missing-file policy, the device, logging and writing. Adding a stage is
one module here and one line in ``rib_ext.pipeline.REGISTRY``. Every stage writes atomically and
skips work whose outputs already exist and are whole, so a rerun resumes.
"""
