"""sfport's Caffe schema (``caffe.proto``) and its committed Python bindings (``caffe_pb2``)."""
from . import caffe_pb2

__all__ = ["caffe_pb2"]
