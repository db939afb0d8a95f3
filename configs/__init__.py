"""Task configs, one file per seed system (`get_config(arg)`), importable as `configs.<name>` so one
config can build on another's tables (configs/footprint_sweep.py on configs/footprint.py's EXPERIMENTS)."""
