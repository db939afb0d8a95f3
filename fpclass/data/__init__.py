"""Data: sources, decoding through the cache, splits, label maps, file lists and streaming.

`fpclass.data.pipeline.load_dataset(DataSettings.from_config(config.data))` lists a source, decodes it and splits it.
"""
