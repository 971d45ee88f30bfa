"""The classifier's side of the pipeline: training it (:mod:`rib_ext.cam.train`) and its plain
multi-scale CAMs (:mod:`rib_ext.cam.maps`), the baseline that RIB improves on."""
