"""The sections of a budgeted search: `config.auto` (`--mode auto`: screen, search, confirm, refit)."""
import dataclasses
import re
from typing import ClassVar

from fpclass.config.settings import ConfigError, Settings

# '90s', '20m', '1.5h', or a number of seconds.
DURATION = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*$')
SECONDS = {None: 1.0, 's': 1.0, 'm': 60.0, 'min': 60.0, 'h': 3600.0}


def duration_seconds(text: str, key: str = 'config.auto.time_budget') -> float:
  """'20m' -> 1200.0; an unreadable or non-positive duration is a ConfigError naming `key`."""
  match = DURATION.match(str(text))
  seconds = float(match.group(1)) * SECONDS[match.group(2)] if match else 0.0
  if seconds <= 0:
    raise ConfigError(f'{key}={text!r}: must be a positive duration such as 90s, 20m or 1.5h')
  return seconds


@dataclasses.dataclass(frozen=True)
class AutoSettings(Settings):
  """`config.auto`: --mode auto finds the best defensible model for the data within a time budget: a linear-probe
  screen of the backbones, a population search (TPE's batches trained as sweeps, successive halving over epochs
  and folds), the finalists confirmed on fresh folds x seeds with paired intervals, and the chosen configuration's
  fold models as the final ensemble in <workdir>/final (docs/auto.md)."""
  SECTION: ClassVar[str] = 'auto'
  time_budget: str = '20m'         # the whole run's wall time: '90s', '20m', '1.5h'
  metric: str = ''                 # a registered metric (fpclass/analysis/metric_registry.py); '' -> the task's
                                   # headline (accuracy; multi-label: mAP)
  # Backbones to screen ('name' or 'name=weights'); () -> every registered pretrained model whose weights are at
  # hand (in the cache, or a file named here), for the data's channels.
  backbones: tuple[str, ...] = ()
  keep: int = 2                    # backbones kept after the screen, beside the config's own model
  # The search space, one 'key: kind(arguments)' entry per config key: log(low, high), float(low, high),
  # int(low, high), choice(a, b, ...); 'model.name: backbones' chooses among the kept candidates. () -> the
  # task's defaults (fpclass.auto.space.default_space).
  space: tuple[str, ...] = ()
  folds: int = 0                   # k of the top rung's k-fold plan; 0 -> config.data.num_folds
  trials: int = 0                  # at most this many trials in all; 0 -> as many as the budget allows
  seed: int = 0                    # the TPE sampler's seed; each trial trains with config.seed
  # How the search spends its seconds (fpclass/auto/schedulers/configured.py names them): successive_halving.
  scheduler: str = 'successive_halving'
  eta: int = 3                     # successive halving: a rung keeps the best 1/eta, with eta x the epochs
  # successive halving: 'folds_first' (a middle rung's member-epochs on more folds at the bottom's epochs) or
  # 'balanced' (folds and epochs shrunk alike); measured in docs/auto.md
  rung_shape: str = 'folds_first'
  finalists: int = 2               # the best trials confirmed on fresh folds x seeds (beside the config as given)
  # The final model: the most other configurations (the best trials after the choice) trained on every fold for a
  # cross-fitted Caruana mix beside the choice's fold models (fpclass/auto/final_mix.py); 0: the choice alone.
  mix: int = 4
  confirm_seeds: tuple[int, ...] = (101,)   # the confirmation's seeds, on folds cut with data.split_seed + 1000
  confirm_share: float = 0.25      # the most of the budget the confirmation may take
  storage: str = ''                # '' -> an Optuna journal file in the workdir; postgresql://... to share a study
  study: str = ''                  # the study's name; '' -> config.name

  def check(self):
    duration_seconds(self.time_budget)
    self.require('keep', self.keep >= 0, '>= 0')
    self.require('folds', self.folds == 0 or self.folds >= 2, '0 (config.data.num_folds) or at least 2')
    self.require('trials', self.trials >= 0, '>= 0 (0: as many as the budget allows)')
    self.require('finalists', self.finalists >= 1, 'at least 1')
    self.require('mix', self.mix >= 0, '>= 0 (0: the final model is the choice\'s fold models alone)')
    self.require('confirm_seeds', len(set(self.confirm_seeds)) == len(self.confirm_seeds),
                 'distinct integers (() skips the confirmation)')
    self.require('eta', self.eta >= 2, 'at least 2')
    self.require('rung_shape', self.rung_shape in ('folds_first', 'balanced'), "'folds_first' or 'balanced'")
    self.require('confirm_share', 0.0 <= self.confirm_share <= 0.5, 'in [0, 0.5]')
    self.require('storage', not self.storage or self.storage.startswith(('postgresql', 'sqlite', 'mysql')),
                 "'' (a journal file in the workdir) or a database URL such as postgresql://user@host/db")

  @property
  def budget_seconds(self) -> float:
    return duration_seconds(self.time_budget)

  @property
  def budget_label(self) -> str:
    """The budget as the user wrote it, with its unit: '60' reads '60s'."""
    text = str(self.time_budget).strip()
    return text + 's' if DURATION.match(text).group(2) is None else text


@dataclasses.dataclass(frozen=True)
class EnsembleSettings(Settings):
  """`config.ensemble`: --mode ensemble on a sweep or auto workdir: Caruana selection over the candidates'
  out-of-fold probabilities and a greedy soup, both scored cross-fitted, written as a workdir (docs/ensembles.md)."""
  SECTION: ClassVar[str] = 'ensemble'
  metric: str = ''                 # a registered metric (fpclass/analysis/metric_registry.py); '' -> the task's
                                   # headline (accuracy; multi-label: mAP)
  max_size: int = 25               # selection rounds, repeats included (AutoGluon's cap)
  candidates: tuple[str, ...] = ()  # the variants or trials (folder names) to choose from; () -> every one
  soup: bool = True                # also a greedy soup of the fold models that share architecture and init
  seed: int = 0                    # halves each fold's images to score the soup, and cuts a single validation
                                   # split (no folds) into 5 parts to cross-fit over
  output: str = 'ensemble'         # the result's folder under --workdir, an ensemble workdir
  timing_batch: int = 32           # images in the batch timed for the ms-per-image column

  def check(self):
    self.require('max_size', self.max_size >= 1, 'at least 1')
    self.require('output', bool(self.output) and self.output not in ('.', '..') and '/' not in self.output
                 and '\\' not in self.output, 'a folder name (no path separators)')
    self.require('timing_batch', self.timing_batch >= 1, 'at least 1')
