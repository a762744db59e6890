"""Emitters: apply a Rewrite to an fx GraphModule (``fx``) or ONNX model (``onnx``)."""
