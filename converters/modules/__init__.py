"""The converters' torch side (``sfport.converters.modules``): the ``nn.Module`` classes, torch helpers and autograd
Functions of each family, one module per family that has torch code (``modules/conv.py`` for ``converters/conv.py``;
``base.py``: ``NoBlobs``; ``ssd_export.py``: DetectionOutput's exported form). A converter imports its family's
module inside the methods that need torch (``build``, ``load``, ...), so reading a net's definition - its shapes,
roles and hooks - imports no torch. Nothing is imported here."""
