"""pycaffe's own names, as sfport gives them: what ``import sfport as caffe`` and a script run by
``python -m sfport.pycaffe script.py`` (whose ``import caffe`` then resolves to sfport) find.

:mod:`.net_spec` is net_spec.py (``NetSpec``, ``layers``, ``params``, ``to_proto``), :mod:`.coord_map`
coord_map.py, :mod:`.registry` the layer registry's list (``layer_type_list``), :mod:`.common` ``Timer``,
``init_log``, ``log`` and ``set_random_seed``, :mod:`.importer` the ``caffe`` ->
``sfport`` names, and ``python -m sfport.pycaffe`` (:mod:`.__main__`) the runner of an unchanged pycaffe script.
"""
