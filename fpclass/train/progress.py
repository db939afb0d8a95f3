"""What a training run prints: a solo run's progress bar and epoch lines, a sweep chunk's summary line. Each
function takes `config.train` typed (`TrainSettings`)."""
import jax
import numpy as np
from tqdm.auto import tqdm

from fpclass.config.training import TrainSettings
from fpclass.train.loop_state import LoopState


def phase_end(loop: LoopState, train: TrainSettings) -> int:
  """The epoch at which `loop`'s current phase ends."""
  if loop.phase == 0:
    return int(train.epochs)
  return loop.phase_start + int(train.finetune_epochs)


def total_epochs(train: TrainSettings) -> int:
  return int(train.epochs) + int(train.finetune_epochs)


def shown_total(loop: LoopState, train: TrainSettings) -> int:
  """The epoch count a solo run shows: its phase's end, plus the fine-tuning epochs still to come."""
  end = phase_end(loop, train)
  two_phases = int(train.finetune_epochs) > 0
  return end if loop.phase == 1 or not two_phases else end + int(train.finetune_epochs)


def step_progress(train: TrainSettings, record, loop: LoopState, epoch: int, steps: int, solo: bool):
  """(bar, on_step): a progress bar over the steps of a solo run's epoch, with the running loss and
  accuracy every train.log_every_steps (reading them waits for the device); the record polls its saves."""
  if not solo:
    return None, lambda done, step_metrics: record.poll()
  bar = tqdm(total=steps, desc=f'epoch {epoch + 1}/{shown_total(loop, train)}', unit='step', leave=False,
             disable=None)
  log_every = max(1, int(train.log_every_steps))

  def on_step(done, step_metrics):
    record.poll()
    bar.update(done - bar.n)
    if done % log_every == 0 or done == steps:
      host = jax.device_get(step_metrics)
      bar.set_postfix(loss=f'{sum(s["loss_sum"] for s in host) / sum(s["count"] for s in host):.4f}',
                      acc=f'{sum(s["correct"] for s in host) / sum(s["count"] for s in host):.3f}')
  return bar, on_step


def log_solo_epoch(train: TrainSettings, rules, loop: LoopState, epoch: int, recorded: tuple) -> None:
  row, improved, stopped_early = recorded
  tqdm.write(f'epoch {epoch + 1}/{shown_total(loop, train)}: loss {row["train_loss"]:.4f} acc '
             f'{row["train_accuracy"]:.3f} | val loss {row["val_loss"]:.4f} acc {row["val_accuracy"]:.3f} f1 '
             f'{row["val_macro_f1"]:.3f}{" *" if improved else ""} ({row["seconds"]:.1f}s)')
  if stopped_early:
    tqdm.write(f'early stopping: no {rules.monitor} improvement for {rules.patience} epochs; best epoch '
               f'{loop.best_epoch}')


def log_chunk_epoch(train: TrainSettings, monitor: str, names: list, recorded: list, epoch: int, seconds: float,
                    prefix: str) -> None:
  values = [row[monitor] for row, _, _ in recorded]
  mean = np.nanmean([np.nan if v is None else v for v in values])
  stopped = [name for name, (_, _, stopped_early) in zip(names, recorded) if stopped_early]
  models = f'{len(names)} model' + ('s' if len(names) > 1 else '')
  tqdm.write(f'{prefix}epoch {epoch + 1}/{total_epochs(train)}: {models}, {seconds:.1f}s, mean {monitor} '
             f'{mean:.4f}' + (f'; early stopped: {", ".join(stopped)}' if stopped else ''))
