"""Analysis of predictions: metrics and their registry, calibration, statistics, error tables, report sections."""
