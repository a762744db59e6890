"""Frontends: torch.fx (``fx``) and ONNX (``onnx``, ``onnx_file``) to the IR."""
