"""The layer library: one registered converter per Caffe layer type (installed as ``sfport.converters``).

A converter is the whole of sfport's knowledge of its Caffe type: the shapes of its tops given its bottoms
(``top_shapes``, as the layer's Reshape), the shapes of its parameter blobs (``param_shapes``, as its
LayerSetUp allocates them), the torch module (``build``), the fillers and random values of its blobs, how Caffe
blobs are loaded into the module and saved back, and its role in a net (``loss``: a Caffe LossLayer whose
first top has loss_weight 1 by default; ``training_only``: dropped with the losses from a deploy form). Shape
inference (:mod:`sfport.netdef.shapes`), random weights and merging (:mod:`sfport.netdef.weight_match`), the net
(:mod:`sfport.runtime.net`) and the graph (:mod:`sfport.netdef.graph`) ask the registry; none of them switches on type names.
Modules keep their parameters in Caffe's layout and order (``module.caffe_blobs`` names them), so loading and
saving are plain copies and a round trip is exact. A family's modules are its torch side, :mod:`.modules`
(``modules/conv.py`` for ``conv.py``), imported inside the converter methods that need torch (``build``, ``load``,
...): the families themselves import no torch, so reading a definition (``sfport inspect``, ``upgrade``,
``deploy``: shapes, roles, hooks) needs none. The torch side's names are still importable from the families (and
``NoBlobs`` from here), imported on first use.

A type's part in what else sfport does is a hook of its converter too, each with a default in
:class:`Converter` that means "nothing special": for the optimized net (:mod:`sfport.netdef.optimize`)
``affine(layer, module, bottom_shape)`` (the layer as ``a * bottom + b`` per channel: BatchNorm, Scale, Bias),
``fold_affine(layer, module, a, b)`` and ``with_bias(layer)`` (taking such a chain into its blobs: the
convolutions, Deconvolution, InnerProduct), ``identity_at_inference(layer)`` (Dropout, Split), ``fresh_top`` and
``computes_nothing`` (Silence), with :func:`affine_layer` writing the one Scale that stands for a chain; for
``sfport verify``'s references (:mod:`sfport.runtime.verify`) ``for_reference(layer, graph_layer)`` (the
depthwise forks as grouped Convolution, PriorBox's defaults written out), ``reference_blobs(layer, arrays)``
(BatchNorm's zero scale factor), ``opencv_layout(layer, out, num)`` and ``align_reference_output(layer, ours,
ref)`` (DetectionOutput's rows); for training ``class_count(graph_layer)`` (SoftmaxWithLoss, Accuracy,
MarginInnerProduct) and ``loss_plateau(layer)`` (SoftmaxWithLoss's -log(FLT_MIN)).

Adding a type, also from outside sfport::

    from sfport.converters import Converter, register

    @register("MyLayer")
    class MyLayer(Converter):
        def top_shapes(self, layer, bottom_shapes):
            return [bottom_shapes[0]]                 # one per top
        def param_shapes(self, layer, bottom_shapes):
            return [(bottom_shapes[0][1],)]           # one per Caffe blob
        def build(self, layer, bottom_shapes):
            return MyModule(...)                      # an nn.Module; list its nn.Parameters in .caffe_blobs

A ``Python`` layer (python_layer.hpp) is code in the user's module, imported only on request (``sfport
--python-layers``); a well-known one gets a built-in converter chosen by python_param's module and class instead,
registered with ``@register_python("rpn.proposal_layer", "ProposalLayer")`` (:mod:`.proposal`), so nothing the file
names is imported. :func:`get_for` / :func:`find_for` give a layer's converter (such a built-in first, else its
type's): what every place that holds the LayerParameter asks.

A converter that does not say its shapes (the base class answers None) still builds and runs; the net's later
layers then need their input shapes some other way, and weights are not checked against it. Put the class in a
module and either import it before building a net, name it in the environment variable ``SFPORT_CONVERTERS``
(comma-separated module names), or declare it as an entry point of the group ``sfport.converters``.
"""
from __future__ import annotations

# The built-in families register themselves with the registry of .base when they are imported.
from . import (activations, conv, detection_eval, hdf5, linear, loss, margin, multibox, norm, pooling,  # noqa: F401
               recurrent, resize, ssd, structure)
from . import roi  # noqa: F401
from . import brocolli  # noqa: F401
from . import proposal  # noqa: F401
from . import segmentation  # noqa: F401
from .base import (ROLES_WITHOUT_CONVERTER, Converter, NoParams, SameShape, UnknownLayerType, export_form,
                   export_option, export_options,
                   find, find_for, fixed_time, folded_blobs, get, get_for, in_export_form,
                   in_fixed_time, is_loss, is_sink, is_training_only,
                   label_bottoms, load_plugins, python_builtin, python_builtins, register, register_python,
                   registered_types, unregister)
from .norm import affine_layer


def __getattr__(name: str):
    """``NoBlobs`` (an ``nn.Module``: the torch side, :mod:`.modules.base`) imported on first use (PEP 562), so that
    reading a net's definition imports no torch."""
    if name == "NoBlobs":
        from .modules.base import NoBlobs
        return NoBlobs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ROLES_WITHOUT_CONVERTER", "Converter", "NoBlobs", "NoParams", "SameShape", "UnknownLayerType",
           "affine_layer", "export_form", "export_option", "export_options", "find", "fixed_time", "folded_blobs", "get", "in_export_form",
           "in_fixed_time", "is_loss", "is_sink",
           "is_training_only", "unregister", "find_for", "get_for", "python_builtin", "python_builtins",
           "register_python", "label_bottoms", "load_plugins", "register", "registered_types"]
