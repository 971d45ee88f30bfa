"""``python -m rib_ext.visualize``: the pictures of a run or of a folder of maps, from the command
line (see ``__main__``). The drawing itself is :mod:`rib_ext.figures`; the pipeline stage is
:mod:`rib_ext.stages.visualize`."""
