"""Analysis of predictions: metrics, calibration, statistics, Grad-CAM and figures."""
