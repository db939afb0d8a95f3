"""Layers the architectures share: convolutions and max pools that avoid XLA:CPU's slow paths, and the Keras and
torch layer semantics the ports reproduce."""
