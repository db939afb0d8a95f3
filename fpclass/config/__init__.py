"""The config schema, the bottom of the import graph: it imports no other fpclass package.

`schema.base_config()` declares every key a run can read. A section read as a unit is a typed `Settings`
dataclass (`settings.py`), grouped by the stage that reads it: `inputs.py` (decode, augment), `training.py`
(train, eval, sweep) and `outputs.py` (the modes that read a trained run); `variants.py` parses a sweep's
variants. Import from the module that defines a name: this package file stays empty, so importing one section
costs no more than that section. Checks that need other packages (a known model, optimizer or source) live in
`fpclass.train.validation`, which runs once per launch.
"""
