"""Running a trained classifier outside training: the three runtimes (PyTorch, ONNX Runtime, OpenVINO), checks on
the model files they load, and batch prediction from image files."""

RUNTIMES = ("torch", "onnx", "openvino")
# the exported model's tensors: float32 N x 1 x 28 x 28 images in [0, 1] in, N x 10 class logits out
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
