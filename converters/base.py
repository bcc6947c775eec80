"""The registry and the base classes of converters (see the package's docstring for the contract)."""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import math
import os
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

import numpy as np

from sfport.errors import CaffeFileError

if TYPE_CHECKING:   # the torch side (modules, tensors) is imported when a net is built, not to read a file
    from torch import nn

Shape = tuple  # of ints

_REGISTRY: dict[str, "Converter"] = {}
_PLUGINS_LOADED = False
# Built-in converters of Caffe's Python layers, by python_param's (module, layer): python_layer.hpp runs the class
# the file names; these are sfport's own code for a few well-known classes, so the user's module is never imported.
_PYTHON_LAYERS: dict[tuple[str, str], "Converter"] = {}
_PYTHON = "Python"   # python_layer.hpp's type (sfport.netdef.datalayers.PYTHON)

# Caffe types sfport has no converter for yet, with their role in a net: a training net that holds one still
# reduces to its deploy form, which drops them. A converter registered for one of these types takes over.
ROLES_WITHOUT_CONVERTER: dict[str, str] = {}


_EXPORT_FORM = contextvars.ContextVar("sfport_export_form", default=False)


@contextlib.contextmanager
def export_form():
    """Within: modules compute the form an exported graph (TorchScript, ONNX) holds. A layer whose eager
    computation is not exported as a graph (DetectionOutput asked for ``pre_nms``: :func:`export_options`, or with
    an adaptive NMS) returns what comes before that part, says so in its module's ``export_note`` and puts what
    finishing needs in ``export_metadata`` (written into an ONNX file)."""
    token = _EXPORT_FORM.set(True)
    try:
        yield
    finally:
        _EXPORT_FORM.reset(token)


def layer_error(layer, what: str, path=None) -> CaffeFileError:
    """The one-line error about a layer's definition: ``layer 'name' (Type): what`` (naming ``path`` when the
    fault is in a file the layer reads)."""
    return CaffeFileError(path, f"layer '{layer.name}' ({layer.type}): {what}")


def in_export_form() -> bool:
    return _EXPORT_FORM.get()


_EXPORT_OPTIONS = contextvars.ContextVar("sfport_export_options", default={})


@contextlib.contextmanager
def export_options(**options):
    """Within: the options an export was asked for (``pre_nms``: DetectionOutput's top before its NMS), read by a
    module in its export form with :func:`export_option`; nested calls add to the options around them."""
    token = _EXPORT_OPTIONS.set({**_EXPORT_OPTIONS.get(), **options})
    try:
        yield
    finally:
        _EXPORT_OPTIONS.reset(token)


def export_option(name: str, default=None):
    return _EXPORT_OPTIONS.get().get(name, default)


_FIXED_TIME = contextvars.ContextVar("sfport_fixed_time", default=False)


@contextlib.contextmanager
def fixed_time():
    """Within: an export keeps the time axis (``Converter.input_axes``' "time") at the traced length, so a
    recurrent layer's loop over it is unrolled; outside, a trace keeps the loop (a scripted loop, ONNX Loop)."""
    token = _FIXED_TIME.set(True)
    try:
        yield
    finally:
        _FIXED_TIME.reset(token)


def in_fixed_time() -> bool:
    return _FIXED_TIME.get()


class UnknownLayerType(CaffeFileError):
    """No converter is registered for a layer's type (bad input: one line, exit status 2 on the command line)."""

    def __init__(self, layer_name: str, layer_type: str):
        self.layer_name, self.layer_type = layer_name, layer_type
        where = ("in a module named in SFPORT_CONVERTERS or in the 'sfport.converters' entry-point group")
        if layer_type == _PYTHON:   # python_layer.hpp: the code lives in the user's module, never run from a file
            what = (f"layer '{layer_name}' is a Python layer: its code is in your Python module, and sfport imports "
                    f"code named by a model file only when asked: run `sfport --python-layers ...` (the module is "
                    f"found in the working directory or on PYTHONPATH), use the pycaffe API (caffe.Net), or "
                    f"register a converter with @sfport.converters.register('Python') {where} (built in, by "
                    f"module and layer: {', '.join(python_builtins()) or 'none'})")
        else:
            what = (f"layer '{layer_name}' has type '{layer_type}', which sfport has no converter for; register one "
                    f"with @sfport.converters.register('{layer_type}') {where}")
        super().__init__(None, what)


class Converter:
    """Base class: subclasses implement ``build`` and, to take part in shape inference and weight checks,
    ``top_shapes`` and ``param_shapes``; ``load``/``save`` copy ``module.caffe_blobs`` in order.

    Hooks that other parts of sfport ask instead of switching on type names; each default means "nothing
    special", so a converter overrides only those that concern its type:

    - shape inference (:mod:`sfport.netdef.shapes`): ``check_parameters`` (Caffe's CHECKs on the layer's own values,
      asked where its bottoms' shapes are unknown);

    - the optimized net (:mod:`sfport.netdef.optimize`): ``affine`` (the layer as ``a * bottom + b`` per channel),
      ``fold_affine`` and ``with_bias`` (a layer that takes such a chain into its own blobs; ``folds_affine`` says
      whether a converter does), ``identity_at_inference``, ``fresh_top``, ``computes_nothing``;
    - the references of ``sfport verify`` (:mod:`sfport.runtime.verify`): ``for_reference`` (the layer as the
      references read it), ``reference_blobs``, ``opencv_layout`` and ``align_reference_output``;
      ``differs_in_training`` (what a TRAIN-phase net computes otherwise: batch statistics, dropout);
    - training (:mod:`sfport.solver`, :mod:`sfport.data.feed`): ``class_count`` (the labels synthetic data
      draws from), ``loss_plateau`` (the value of a diverged loss);
    - pycaffe's coord_map.py (:mod:`sfport.pycaffe.coord_map`): ``coord_map``, ``coord_identity``,
      ``coord_bottoms``;
    - inputs sfport makes up (``sfport verify``'s random inputs, export's checks): ``input_value`` (a meaningful
      value for an input that feeds the layer directly: Proposal's im_info), ``input_axes`` (which axis of a
      bottom is the batch N, and which the time T, where it is not N on axis 0: the recurrent layers);
    - running a batch in parts (:func:`sfport.netdef.graph.images_apart`): ``images_apart`` (``per_image``)."""

    types: tuple[str, ...] = ()
    loss: bool = False            # Caffe LossLayer: the first top enters the loss with weight 1 by default
    training_only: bool = False   # dropped (with the losses) when a training net becomes a deploy net
    label_bottoms: tuple = ()     # bottoms that take labels (an inference net has none: the layer goes with them)
    fresh_top: bool = False       # the module's top is a new tensor, never a view of its bottom (a later layer
                                  # that reads it alone may overwrite it in place)
    computes_nothing: bool = False  # the layer only consumes its bottoms (Silence): an optimized net drops it,
    #                                 the deploy form counts what only it reads as unused
    copies_bottom: bool = False     # every top is a copy of the one bottom (Split, which InsertSplits inserts)
    coord_identity: bool = False    # pycaffe coord_map.py's PASS_THROUGH_LAYERS: coordinates pass unchanged
    coord_bottoms: int | None = None  # the bottoms coord_map.py walks through (None: all; Crop: the first)
    param_field: str | None = None  # the LayerParameter field its parameters are read from, where the schema's
    #                                 <Type>Parameter naming does not say (Deconvolution: convolution_param)
    discrete: bool = False          # its tops change by steps with its bottoms (a sort, an NMS): export checks it
    #                                 on its bottoms as onnxruntime computes them (sfport.runtime.export)
    fork_fields: tuple = ()         # fields of a fork's schema (``--proto``) it reads: ``my_param`` or
    #                                 ``convolution_param.my_flag`` (sfport.formats.forkschema.check_layer)
    per_image: bool = False         # at inference each image's tops come from its own bottoms alone: the
    #                                 default answer of ``images_apart``

    def top_shapes(self, layer, bottom_shapes: list[Shape]) -> list[Shape] | None:
        """The shape of each top for these bottom shapes (None: this converter does not say)."""
        return None

    def images_apart(self, layer, bottom_shapes) -> bool:
        """Whether, at inference, row n (axis 0) of every top is computed from row n of every bottom alone (and
        the layer's own blobs), at any batch: a batch may then run in parts and the parts' tops be joined
        (:func:`sfport.netdef.graph.images_apart`: the Runner's eager net on the CPU). ``per_image`` unless the
        layer's parameters decide (an axis that may be 0); False where a converter does not say."""
        return self.per_image

    def check_parameters(self, layer) -> None:
        """Raise ValueError where the layer's own parameters fail a CHECK of Caffe's LayerSetUp that needs no
        bottom shape (asked where the bottoms' shapes are unknown; ``top_shapes`` checks the rest)."""

    def param_shapes(self, layer, bottom_shapes: list[Shape]) -> list[Shape] | None:
        """The shape of each parameter blob Caffe allocates for these bottom shapes (None: does not say)."""
        return None

    def build(self, layer, bottom_shapes: list[Shape]) -> nn.Module:
        raise NotImplementedError

    def fillers(self, layer) -> list:
        """The FillerParameter of each Caffe blob (None: keep the value the module was built with)."""
        return []

    def random_blobs(self, layer, shapes: list[Shape], rng: np.random.Generator) -> list[np.ndarray]:
        """Random float32 blobs of a sensible scale for test nets: weights (2-D and more) ~ N(0, 1/fan_in),
        vectors ~ N(0, 0.1^2)."""
        return [rng.normal(0, 1 / math.sqrt(max(self.fan_in(layer, s), 1)), s).astype(np.float32) if len(s) >= 2
                else (0.1 * rng.standard_normal(s)).astype(np.float32) for s in shapes]

    def fan_in(self, layer, weight_shape: Shape) -> int:
        """Inputs per output of a weight blob (what random weights are scaled by)."""
        return math.prod(weight_shape[1:])

    def params(self, module: nn.Module) -> list[nn.Parameter]:
        own = module._parameters   # most blobs are parameters: read directly, not through nn.Module.__getattr__
        return [own[name] if name in own else getattr(module, name) for name in getattr(module, "caffe_blobs", ())]

    def load(self, module: nn.Module, arrays: list[np.ndarray]) -> None:
        """Copy Caffe blobs into the module's parameters. The caller has checked them with Caffe's rule
        (:func:`sfport.netdef.weight_match.blob_fits`); a legacy 4-D blob padded with leading 1s takes the
        parameter's shape."""
        import torch
        params = self.params(module)
        if len(arrays) != len(params):
            raise ValueError(f"{len(arrays)} blobs for the layer's {len(params)} parameters")
        shapes = [a.shape if isinstance(a, np.ndarray) else np.shape(a) for a in arrays]
        for j, (p, stored) in enumerate(zip(params, shapes)):
            need = tuple(p.shape)
            if stored != need and stored != (1,) * (len(stored) - len(need)) + need:  # Blob::ShapeEquals
                raise ValueError(f"blob {j} has shape {list(stored)}, the layer needs {list(need)}")
        for p, a, stored in zip(params, arrays, shapes):
            if p.dtype is torch.float32 and p.device.type == "cpu" and p.is_contiguous():
                # one copy, straight from the file's bytes into the parameter's memory (a model of a few hundred
                # blobs loads 4x faster than through a tensor made from them); outside autograd, as numpy
                np.copyto(p.detach().numpy().reshape(stored), a, casting="same_kind")
            else:
                with torch.no_grad():
                    p.copy_(torch.tensor(np.asarray(a, dtype=np.float32)).reshape(p.shape))

    def save(self, module: nn.Module) -> list[np.ndarray]:
        return [p.detach().cpu().float().numpy().copy() for p in self.params(module)]

    # ---- the optimized net (sfport.netdef.optimize) ----

    def affine(self, layer, module: nn.Module, bottom_shape: Shape) -> tuple[np.ndarray, np.ndarray] | None:
        """(a, b), float64 vectors over the channel axis 1 with ``top = a * bottom + b``, when this layer (one
        bottom of ``bottom_shape``, one top, its module in the state it runs) is that per-channel affine map;
        else None."""
        return None

    def fold_affine(self, layer, module: nn.Module, a: np.ndarray, b: np.ndarray) -> list[np.ndarray] | None:
        """The layer's new float32 blobs (computed in float64, rounded once) when ``a * top + b`` (per channel of
        axis 1) is folded into it; None when it cannot take it (its outputs are not axis 1's channels)."""
        return None

    @property
    def folds_affine(self) -> bool:
        """Whether this type can take a following affine chain into its blobs (it overrides ``fold_affine``)."""
        return type(self).fold_affine is not Converter.fold_affine

    def with_bias(self, layer) -> None:
        """Make ``layer`` (a LayerParameter being written) have a bias blob, as ``fold_affine``'s blobs do."""

    def identity_at_inference(self, layer) -> bool:
        """Whether the layer's every top equals its bottom in a test-phase net (an optimized net drops it)."""
        return False

    # ---- the references of sfport verify (sfport.runtime.verify) ----

    def for_reference(self, layer, graph_layer) -> None:
        """Rewrite ``layer`` (a copy of the LayerParameter; ``graph_layer`` its GraphLayer, or None) in place into
        the same layer as the references (OpenCV, BVLC pycaffe) read it: a fork's type under its BVLC name, the
        defaults a reference reads otherwise written out."""

    def reference_blobs(self, layer, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """The layer's blobs as the references read them, the same layer for Caffe (``arrays`` when unchanged)."""
        return arrays

    def opencv_layout(self, layer, out: np.ndarray, num: int) -> np.ndarray:
        """OpenCV's first output of this layer (batch ``num``) in the layout Caffe (and sfport) give it."""
        return out

    def for_opencv(self, layer) -> None:
        """Rewrite ``layer`` (already through ``for_reference``) in place into what OpenCV's Caffe importer runs
        for it where that is not what pycaffe runs (a built-in Python layer as OpenCV's own layer type)."""

    def align_reference_output(self, layer, ours: np.ndarray, ref: np.ndarray) -> np.ndarray:
        """The reference's first top in our order where that order is not defined by the layer (ties); values
        untouched. ``ref`` when there is nothing to align."""
        return ref

    def align_reference_tops(self, layer, bottoms: list, ours: list, ref: list, tol: float) -> list:
        """The reference's tops (``ref``, None where it gave none) where they differ from ``ours`` only by a choice
        the layer makes between values equal within ``tol`` (relative to max(1, max |bottom|)) of its ``bottoms``
        (ours): such a choice is the reference's arithmetic, not the layer's definition (a MAX pooling's mask at a
        near-tie). ``ref`` when there is nothing to align."""
        return ref

    def differs_in_training(self, layer, module: nn.Module) -> str | None:
        """What this layer of a TRAIN-phase net (``module`` in training mode) computes otherwise than the
        references, which run a net for inference, in words ("the batch's statistics normalize there ..."); None
        (the default): the same."""
        return None

    # ---- pycaffe's coord_map.py (sfport.pycaffe.coord_map) ----

    def coord_map(self, layer) -> tuple | None:
        """coord_map.py's ``(axis, scale, shift)`` of the layer (output coordinate ``i * scale`` <- input ``i``,
        shifted by ``shift``); ``(None, 1, 0)`` for the identity of a pointwise layer; None where coord_map.py
        has no mapping (its UndefinedMapException)."""
        return (None, 1, 0) if self.coord_identity else None

    # ---- inputs sfport makes up (sfport.runtime.verify, sfport.runtime.export) ----

    def input_value(self, layer, bottom: int, shape: Shape, image_shape: Shape | None) -> np.ndarray | None:
        """The float32 value (of ``shape``) of a net input that feeds bottom ``bottom`` of this layer directly,
        where sfport makes inputs up; ``image_shape`` is the shape of the net's first 4-D input (None: it has
        none). None (the default): random values."""
        return None

    def input_axes(self, layer, bottom: int, shape: Shape) -> dict[int, str] | None:
        """The axes of bottom ``bottom`` (of ``shape``) that an export keeps dynamic, {axis: "batch" or "time"}:
        the batch N, and a time axis T that no weight depends on (a recurrent layer's). None (the default): N on
        axis 0, as Caffe's blobs lay it out."""
        return None

    # ---- training (sfport.solver, sfport.data.feed) ----

    def class_count(self, graph_layer) -> int | None:
        """The number of classes this layer of a built net scores (its labels range over them), or None."""
        return None

    def loss_plateau(self, layer) -> float | None:
        """The value of this loss when every label has probability 0 (a loss stuck there has diverged), or
        None when it has no such value."""
        return None


class NoParams(Converter):
    """A converter of a parameter-free layer (Caffe allocates no blobs): its ``top_shapes`` says the tops."""

    def param_shapes(self, layer, bottom_shapes):
        return []


class SameShape(NoParams):
    """A converter of a parameter-free layer whose tops all have the shape of its first bottom."""

    def top_shapes(self, layer, bottom_shapes):
        return [tuple(bottom_shapes[0])] * len(layer.top)


def register(*types: str):
    """Class decorator: register a Converter subclass for one or more Caffe type names (replacing any)."""
    def deco(cls):
        inst = cls()
        inst.types = tuple(types)
        for t in types:
            _REGISTRY[t] = inst
        return cls
    return deco


def unregister(*types: str) -> None:
    """Remove the converters of these types (a registration made for a while: ``sfport --python-layers``)."""
    for t in types:
        _REGISTRY.pop(t, None)


def load_plugins() -> None:
    """Import converter modules named in SFPORT_CONVERTERS and the 'sfport.converters' entry points (once)."""
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for name in filter(None, (s.strip() for s in os.environ.get("SFPORT_CONVERTERS", "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 - the user's module: any failure to import it is their input
            _PLUGINS_LOADED = False
            raise CaffeFileError("$SFPORT_CONVERTERS", f"cannot import the converter module '{name}': "
                                                       f"{type(e).__name__}: {e}") from None
    for ep in entry_points(group="sfport.converters"):
        try:
            ep.load()
        except Exception as e:  # noqa: BLE001
            _PLUGINS_LOADED = False
            raise CaffeFileError(f"entry point {ep.name} = {ep.value}", f"cannot load this 'sfport.converters' "
                                                                        f"plugin: {type(e).__name__}: {e}") from None


def get(layer_type: str, layer_name: str = "") -> Converter:
    load_plugins()
    try:
        return _REGISTRY[layer_type]
    except KeyError:
        raise UnknownLayerType(layer_name, layer_type) from None


def find(layer_type: str) -> Converter | None:
    """The converter of a type, or None when none is registered."""
    load_plugins()
    return _REGISTRY.get(layer_type)


def register_python(module: str, layer: str):
    """Class decorator: register a Converter subclass as sfport's built-in converter of the ``Python`` layers whose
    python_param names this ``module`` and ``layer`` class (py-faster-rcnn's ``rpn.proposal_layer`` /
    ``ProposalLayer``): such a layer runs without ``--python-layers`` and nothing it names is imported."""
    def deco(cls):
        inst = cls()
        inst.types = (_PYTHON,)
        _PYTHON_LAYERS[(module, layer)] = inst
        return cls
    return deco


def python_builtin(layer) -> Converter | None:
    """The built-in converter of a ``Python`` layer (a LayerParameter) by its python_param module and layer,
    None for any other layer."""
    if layer.type != _PYTHON:
        return None
    return _PYTHON_LAYERS.get((layer.python_param.module, layer.python_param.layer))


def python_builtins() -> list[str]:
    """``module.layer`` of every built-in Python layer."""
    return sorted(f"{m}.{n}" for m, n in _PYTHON_LAYERS)


def get_for(layer) -> Converter:
    """The converter of a layer (a LayerParameter): a ``Python`` layer's built-in one by its module and class (before
    any converter registered for the type), else its type's (:func:`get`; an unknown type: UnknownLayerType)."""
    return python_builtin(layer) or get(layer.type, layer.name)


def find_for(layer) -> Converter | None:
    """:func:`get_for`, None where there is no converter."""
    return python_builtin(layer) or find(layer.type)


def registered_types() -> list[str]:
    load_plugins()
    return sorted(_REGISTRY)


def is_loss(layer_type: str) -> bool:
    """Whether the type is a Caffe loss layer (its first top has loss_weight 1 by default)."""
    c = find(layer_type)
    return c.loss if c is not None else ROLES_WITHOUT_CONVERTER.get(layer_type) == "loss"


def label_bottoms(layer_type: str) -> tuple:
    """The bottoms of a type that take labels (MarginInnerProduct's second, for example)."""
    c = find(layer_type)
    return tuple(c.label_bottoms) if c is not None else ()


def is_sink(layer_type: str) -> bool:
    """Whether layers of this type only consume their bottoms (``Converter.computes_nothing``: Silence)."""
    c = find(layer_type)
    return c is not None and c.computes_nothing


def folded_blobs(module: nn.Module, a: np.ndarray, b: np.ndarray, scale_weight) -> list[np.ndarray]:
    """``fold_affine``'s blobs for a layer with a weight and an optional bias: ``scale_weight(w)`` scales its
    float64 weight by ``a`` along its output channels, the bias becomes ``bias * a + b``; rounded once to
    float32."""
    w = scale_weight(module.weight.detach().double().numpy())
    bias = module.bias.detach().double().numpy() if module.bias is not None else np.zeros(len(a))
    return [w.astype(np.float32), (bias * a + b).astype(np.float32)]


def is_training_only(layer_type: str) -> bool:
    """Whether a deploy form of a training net drops layers of this type (losses, Accuracy, Silence, ...)."""
    c = find(layer_type)
    return (c.loss or c.training_only) if c is not None else layer_type in ROLES_WITHOUT_CONVERTER

