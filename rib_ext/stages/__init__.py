"""Pipeline stages, one module each, named after the stage (``python -m rib_ext.pipeline --help``).

Data flows one way: dataset -> train_cam (classifier) -> make_cam (maps) -> eval_seed -> crf.
Every stage writes atomically and skips work whose outputs already exist, so a rerun resumes.
"""
