"""The export stage: the champion as ONNX and as an OpenVINO IR, checked for parity with PyTorch, measured, logged
and registered beside its source version."""
