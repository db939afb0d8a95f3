"""Linear probes of frozen backbones: pooled features, the probe, its report, and the screen `--mode auto`
uses to pick candidates."""
