"""The architectures, one file per family: Flax linen modules registered by name (`fpclass.models.register`).
What loads, names and checks them is the infrastructure one level up, in `fpclass.models`."""
