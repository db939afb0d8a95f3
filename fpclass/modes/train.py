"""`--mode train`, training only: `train(config, workdir)` runs the plan of one member
(`fpclass.train.plan.solo_plan`) through the one training loop (`fpclass.train.loop.run_plan`). The mode
runner chains evaluate and explain after it (`fpclass.modes`).

The whole training set is a device array and each step gathers its batch by index, or, when the decoded
set exceeds config.data.device_memory_budget, each batch is streamed from the memory-mapped decode cache in
the same order (`fpclass.train.steps.CompiledSteps.epoch`). Every epoch writes metrics.csv and the `last` checkpoint (with the loop
state, so a killed run resumes where it stopped), and the `best` checkpoint when the monitor improves.

SIGINT (Ctrl-C) or SIGTERM stops the run after the current step: the state in the middle of the epoch is
saved as the `interrupted` checkpoint, with the steps done and their metrics, and launching again continues
from the next step, bit for bit. A second signal acts at once. In a multi-process job every process must
stop at the same step, so there the stop waits for the end of the epoch (process 0's signal decides).
"""
from fpclass.data import pipeline
from fpclass.train.loop import run_plan
from fpclass.train.plan import solo_plan


def train(config, workdir) -> pipeline.Dataset:
  """Trains (resuming from `workdir` when it holds a run); returns the dataset it trained on, so the
  modes chained after it need not decode it again. `config` has been validated by the mode runner."""
  (run,) = run_plan(solo_plan(config), workdir)
  return run.data.dataset
