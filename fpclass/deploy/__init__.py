"""What leaves the workdir: export (ONNX, StableHLO) with its graph rewrites, the int8 model, and the
out-of-distribution score carried with the model."""
