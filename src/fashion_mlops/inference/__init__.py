"""Running a trained classifier outside training: the three runtimes (PyTorch, ONNX Runtime, OpenVINO), checks on
the model files they load, and batch prediction from image files."""

RUNTIMES = ("torch", "onnx", "openvino")
