"""Tracking sinks: the places a run's records go, one backend per module (`sink.Sink` is the interface).

`fpclass.runtime.tracking` fans each record out to the active sinks; `configured.open_tracker` builds them from
the config for the mode runner. metrics.csv (`csv_sink`) is always on; TensorBoard (`tensorboard_sink`,
config.train.tensorboard) and MLflow (`mlflow_sink`, config.track) are side channels: a fault warns once and
turns that sink off. A new backend is one module here and one entry in `configured.SINKS` (CONTRIBUTING.md).
"""
