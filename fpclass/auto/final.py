"""The final model of `--mode auto` (stage 4): an ensemble workdir in `final/` of the chosen configuration's fold
models, or of a cross-fitted mix over everything the search trained, whichever scores better.

The choice's fold models come from the confirmation when it ran (its folds chose nothing), else from the search's
top rung. The budget's rest then trains, each set a round of its own in `more/`: the folds the choice lacks; for
a choice the confirmation did not back, the config as given on the same folds (the cheap rungs saw few epochs: the
user's recipe hedges that); the runners-up, the best other configurations (`config.auto.mix`), on every fold, or
on the most folds that fit at full epochs; then, unless `config.auto.trials` ended the search, more seeds of the
choice, each on the most folds that fit (the last one shorter, so the last seconds are spent too). "Every fold"
is the data's k: where the search trained its trials on the first few, the folds the choice lacks come first.
`fpclass.auto.final_mix` then weighs them: a Caruana selection over the configurations (these, and every other
one at the highest fidelity it reached: `searched`), cross-fitted against the choice's equal-weight fold models;
the out-of-fold probabilities it writes (`ensemble_predictions.csv`) chose nothing (docs/auto.md).
"""
import dataclasses
import json
import pathlib
import time

import pandas as pd

from fpclass import fileio
from fpclass.analysis import metric_registry
from fpclass.auto import final_mix
from fpclass.auto import study as study_lib
from fpclass.auto.context import TAIL, Context, Entry, kept_after
from fpclass.auto.first_trials import BASELINE
from fpclass.auto.ranking import best_per_configuration, configuration_key
from fpclass.auto.study import changes_of
from fpclass.infer.ensemble import member_workdirs, workdir_metadata
from fpclass.train import oof, sidecar
from fpclass.train import workdir_layout as layout
from fpclass.train.plan import EXPERIMENT_FILE, apply_changes

MORE = 'more'   # the rounds that complete and widen the final ensemble
MIX_RECORD = 'mix.json'   # final/'s record of the mix: candidates, cross-fitted scores, weights, which was kept


@dataclasses.dataclass(frozen=True)
class Source:
  """Where the chosen configuration's fold models were trained: the folder, the config its folds were cut with,
  and its seeds; the epochs they were planned for (a top rung the budget cut trains fewer than the config's,
  and the pieces that complete it match them) and the share of those that early stopping let them train (what
  a piece is priced at: a member that stops at 10 of 27 epochs costs 10)."""
  folder: pathlib.Path
  base: object
  seeds: tuple
  confirmed: bool
  epochs: int
  share: float


def final_model(ctx: Context, chosen: dict) -> tuple[pathlib.Path | None, str]:
  """(final workdir, note): the choice's fold models, completed and widened by the budget's rest
  (`spend_the_rest`), or the cross-fitted mix over everything the search trained when it scores better
  (`fpclass.auto.final_mix`), as one ensemble workdir in `final/`."""
  chosen['config'] = sidecar.config_as_json(apply_changes(ctx.base, chosen['changes'], 'the chosen configuration'))
  source = source_of(ctx, chosen['name'])
  if not _finished(source.folder):
    return None, f'no fold model of {chosen["name"]} finished; launch again with more time to train it'
  start = time.perf_counter()
  given = None if source.confirmed else _given_trial(ctx, chosen)
  pieces, others = spend_the_rest(ctx, chosen, source, given)
  # The config as given is left to `searched` unless the rest trained it: a rest spent on the choice's missing folds
  # still leaves its top-rung fold models (a tie sent both on) to the mix.
  others.update(searched(ctx, [chosen, *others]))
  rows = {folder: _kept_rows(folder) for folder in [*pieces, *others.values()]}   # read once: the mix, then oof.FILE
  candidates = [final_mix.Candidate(chosen['name'], tuple(rows[f] for f in pieces), tuple(pieces))]
  candidates += [final_mix.Candidate(name, (rows[folder],), (folder,)) for name, folder in others.items()]
  mix = final_mix.choose(candidates, chosen['name'], metric_registry.REGISTRY[ctx.metric])
  ctx.budget.add_stage('final', time.perf_counter() - start)
  out = ctx.workdir / sidecar.AUTO_FINAL
  out.mkdir(exist_ok=True)
  members = [(folder, member_workdirs(folder), weight) for folder, weight in mix.members]
  metadata = workdir_metadata(out, members, ctx.metric)
  metadata['ensemble'].update(kind='auto', trial=chosen['trial'], kept=mix.record['kept'])
  sidecar.write_metadata(out, metadata)
  frame = pd.concat([rows[folder] for folder, _ in mix.members], ignore_index=True)
  fileio.write_csv(out / oof.FILE, frame)
  fileio.write_csv(out / oof.ENSEMBLE_FILE, mix.predictions)
  fileio.write_json(out / MIX_RECORD, mix.record)
  chosen['final_score'] = float(mix.score)
  chosen['final_kept'] = mix.record['kept']
  models = sum(len(m) for _, m, _ in members)
  splits = set(frame['split'])
  # Two fold models of different folds have together trained on every image; one has not seen its own fold.
  seen = ("the source's training split" if ctx.own_split else 'every labelled image' if len(splits) > 1
          else f'{ctx.data_folds - 1} of {ctx.data_folds} folds\' images')
  if not ctx.own_split and len(splits) < ctx.data_folds:
    seen += f', scored on the {len(splits)} of {ctx.data_folds} folds they hold out'
  seeds = sorted(set(frame['seed']))
  honest = ('the source\'s own validation split, whose images also chose it (optimistic: no fold is cut there)'
            if ctx.own_split else 'the confirmation\'s fresh folds, which chose nothing' if source.confirmed else
            'the search\'s folds, which also chose it (optimistic)')
  if mix.record['kept'] == 'mix' and mix.record['pool'] < mix.record['examples']:
    honest = (f'the {mix.record["pool"]} of {mix.record["examples"]} examples every member held out, the weights '
              'cross-fitted, though the search ranked its trials on them too (optimistic); the choice alone '
              f'{mix.record["alone"]:.4f} there')
  elif source.folder.parent.parent.name == layout.ROUNDS:
    honest += f'; the deadline cut its top rung, so its fold models start from {source.folder.parent.name}\'s'
  what = (f'{models} fold model(s) of {chosen["name"]}' if mix.record['kept'] == 'choice' else
          f'{models} fold models of {len(mix.members)} set(s), the mix of ' +
          ', '.join(f'{n} x{w:.2f}' for n, w in mix.record['weights'].items()))
  return out, (f'{what} as one ensemble (seeds {seeds}; together they trained on {seen}); {ctx.metric} '
               f'{chosen["final_score"]:.4f} out of fold on {honest}; '
               + final_mix.describe(mix.record, metric_registry.title(ctx.metric)))


def source_of(ctx: Context, name: str) -> Source:
  """The confirmation's fold models of `name` when it trained them, else the search's top rung's, else those of
  the highest lower rung it finished: a deadline that cut the top rung (a loaded machine, a short budget) still
  leaves a model, whose missing folds the budget's rest trains."""
  confirmed = ctx.workdir / layout.CONFIRM / name
  if _finished(confirmed):
    return Source(confirmed, ctx.fresh_folds(), tuple(ctx.settings.confirm_seeds), True,
                  *_trained(ctx, confirmed))
  top = ctx.workdir / layout.TRIALS / name
  rungs = sorted((ctx.workdir / layout.ROUNDS).glob(f'b*-r*/{name}'), key=lambda p: layout.rung_level(p.parent), reverse=True)
  folder = next((f for f in [top, *rungs] if _finished(f)), top)
  return Source(folder, ctx.base, (int(ctx.base.seed),), False, *_trained(ctx, folder))


def _trained(ctx: Context, folder: pathlib.Path) -> tuple[int, float]:
  """(the epochs `folder`'s fold models were planned for, the mean share of them they trained); the config's
  epochs and 1 where the folder has no record yet."""
  if not (folder / EXPERIMENT_FILE).is_file():
    return ctx.epochs, 1.0
  record = _record(folder)
  planned = int(record.get('config', {}).get('train', {}).get('epochs', ctx.epochs))
  trained = [int(r['epochs_trained']) for r in record['rows'] if r['kept'] and 'epochs_trained' in r]
  share = min(1.0, max(1.0 / planned, sum(trained) / len(trained) / planned)) if trained else 1.0
  return planned, share


def spend_the_rest(ctx: Context, chosen: dict, source: Source, given: dict | None) -> tuple[list, dict]:
  """(the choice's folders, {name: folder} of the other configurations it trained or took) after the budget's
  rest trained (or an earlier launch did): the source's missing folds; for a choice the confirmation did not back,
  the config as given (`given`, `_given_trial`) on the same folds (its top-rung fold models when it has them);
  the runners-up (`runners_up`) on every fold, or the first on the most folds that fit at full epochs
  (`_train_runner_up`); then, unless a trial count ended the search, one more seed of the
  choice after another, each on the most folds that fit (`piece_size`: the last one shorter when a whole member no
  longer fits). The first piece is priced at the set-up of a configuration the search trained (`known_setup`);
  the later ones at the set-up a piece measured."""
  everything = ctx.splits(ctx.data_folds)   # the data's folds: the search's trials may have trained the first few
  record = _record(source.folder)
  trained = {row['split'] for row in record['rows'] if row['kept']}
  missing = tuple(s for s in everything if s not in trained)
  known = known_setup(ctx.budget.costs, record['timing'])
  pieces, others, setup = [source.folder], {}, known
  part = 0
  while missing:   # as many pieces as it takes, each the most of the missing folds that fit
    folder, setup = _train_piece(ctx, chosen, source, source.seeds[0], missing, setup, part)
    if folder is None:
      return pieces, others
    pieces.append(folder)
    done = {row['split'] for row in _rows(folder) if row['kept']}
    if not done & set(missing):
      break   # a piece the deadline cut before any of its folds ended: no time for another
    missing, part = tuple(s for s in missing if s not in done), part + 1
  limited = ctx.settings.trials and study_lib.taken_count(ctx.study) >= ctx.settings.trials
  if given is not None:   # an unconfirmed choice: the config as given beside it, on the same folds
    folder = ctx.workdir / layout.TRIALS / given['name']
    if not _finished(folder):
      if limited:
        return pieces, others
      folder, _ = _train_piece(ctx, given, source, source.seeds[0], everything, known)
      if folder is None:
        return pieces, others
    others[given['name']] = folder
  for runner in runners_up(ctx, chosen, given):
    folder = _covering(ctx, runner['name'], everything)
    if folder is None and not limited:
      folder, known = _train_runner_up(ctx, runner, everything, known)
    if folder is None:
      break   # the budget affords no more configurations at full epochs: the rest buys seeds of the choice
    others[runner['name']] = folder
    if not {r['split'] for r in _rows(folder) if r['kept']} >= set(everything):
      break   # a runner-up on fewer folds took what fitted
  if limited:
    return pieces, others   # the user asked for so many trials: the rest of the budget is not theirs to fill
  seed = max(source.seeds) + 1
  while True:
    folder, setup = _train_piece(ctx, chosen, source, seed, everything, setup)
    if folder is None:
      return pieces, others
    pieces.append(folder)
    seed += 1


def runners_up(ctx: Context, chosen: dict, given: dict | None) -> list[dict]:
  """The best `config.auto.mix` configurations after the choice (and the config as given), one trial each, in the
  search's ranking (`fpclass.auto.ranking.best_per_configuration`): the mix's other candidates."""
  out, taken = [], {configuration_key(c['changes']) for c in (chosen, given) if c is not None}
  for t in best_per_configuration(ctx):
    changes = changes_of(t)
    if configuration_key(changes) in taken or study_lib.FOLDER not in t.user_attrs:
      continue
    out.append(dict(name=t.user_attrs[study_lib.FOLDER], trial=t.number, changes=changes))
    if len(out) >= ctx.settings.mix:
      break
  return out


def searched(ctx: Context, taken: list) -> dict:
  """{name: folder} of every other configuration the search trained, in its ranking, each at the highest fidelity
  it finished (the confirmation's folds, else its top-rung folder, else the highest round's): the mix's
  candidates at the fidelity they reached.
  `taken`: the candidates already in (choice dicts, some None, or names), whose configurations are left out."""
  names = {t if isinstance(t, str) else t['name'] for t in taken if t is not None}
  keys = {configuration_key(t['changes']) for t in taken if isinstance(t, dict)}
  out = {}
  for t in best_per_configuration(ctx):
    name = t.user_attrs.get(study_lib.FOLDER)
    if name is None or name in names or configuration_key(changes_of(t)) in keys:
      continue
    rungs = sorted((ctx.workdir / layout.ROUNDS).glob(f'b*-r*/{name}'), key=lambda p: layout.rung_level(p.parent),
                   reverse=True)
    folder = next((f for f in [ctx.workdir / layout.CONFIRM / name, ctx.workdir / layout.TRIALS / name, *rungs]
                   if _finished(f)), None)
    if folder is not None:
      out[name] = folder
  return out


def _covering(ctx: Context, name: str, everything: tuple) -> pathlib.Path | None:
  """The folder of `name` whose kept fold models validated on every split (the search's top rung, or a runner-up
  an earlier launch trained), or None."""
  for folder in (ctx.workdir / layout.TRIALS / name, ctx.workdir / MORE / name):
    if _finished(folder) and {r['split'] for r in _rows(folder) if r['kept']} >= set(everything):
      return folder
  return None


def _train_runner_up(ctx: Context, runner: dict, everything: tuple, setup: float) -> tuple[pathlib.Path | None, float]:
  """A runner-up on the most folds of the data's split that the budget affords at the configuration's epochs
  (every fold when it can), in `more/<its trial folder>`; (its folder or None, the set-up it measured). A runner-up
  on fewer folds is a candidate of the mix on the examples they hold out (`fpclass.auto.final_mix`): the time
  buys the mix a member where it lacks folds, at the fidelity the choice has. An earlier launch's is taken."""
  name = runner['name']
  folder = ctx.workdir / MORE / name
  if (folder / EXPERIMENT_FILE).is_file():
    return (folder if _finished(folder) else None), setup
  costs = ctx.budget.costs
  fitting = piece_size(costs, setup, ctx.budget.left() - TAIL * ctx.budget.seconds, len(everything), ctx.epochs)
  if fitting is None or fitting[1] != ctx.epochs:
    return None, setup
  with ctx.stop(TAIL * ctx.budget.seconds) as stop:
    outcomes, _ = ctx.round(ctx.base, [Entry(name, runner['changes'])], everything[:fitting[0]],
                            (int(ctx.base.seed),), ctx.epochs, ctx.workdir / MORE, stop)
  return (folder if _finished(folder) else None), _measured_setup(ctx, outcomes.get(name), setup)


def _measured_setup(ctx: Context, outcome, setup: float) -> float:
  """The set-up a finished round measured (its seconds less its members' and member-epochs' share), its measure
  added to the cost model; `setup` unchanged when the round reached nothing."""
  if outcome is None or not outcome.seconds:
    return setup
  costs = ctx.budget.costs
  ctx.budget.add_measure(outcome.members, outcome.member_epochs, outcome.seconds, outcome.compile_seconds)
  return max(0.0, outcome.seconds - outcome.members * costs.member - outcome.member_epochs * costs.member_epoch)


def known_setup(costs, timing: dict) -> float:
  """The set-up of a configuration the search trained: without its compiling (`Costs.warm_setup`) where the
  source trained in the loop form (`timing`: its experiment.json's), whose programs the job shares by key (the
  schedule's lengths are their arguments, so a piece of fewer epochs compiles nothing either; a relaunch loads
  them from the persistent compilation cache); a new configuration's in the vmap form, which compiles its own for
  each cohort."""
  return costs.warm_setup if timing['form'] == 'loop' else costs.setup


def _given_trial(ctx: Context, chosen: dict) -> dict | None:
  """The config as given (the study's first trial) as a choice dict, when the choice is another trial."""
  given = next((t for t in ctx.study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE)), None)
  if given is None or given.number == chosen['trial'] or study_lib.FOLDER not in given.user_attrs:
    return None
  return dict(name=given.user_attrs[study_lib.FOLDER], trial=given.number, changes=changes_of(given))


def _train_piece(ctx: Context, chosen: dict, source: Source, seed: int, folds: tuple,
                 setup: float, part: int = 0) -> tuple[pathlib.Path | None, float]:
  """(its folder, the set-up to price the next piece at): the members of `seed` on the most of `folds`, at the
  most of the source's epochs, that the budget affords at `setup` (all of them when an earlier launch trained the
  piece); None when none fits or none finished. `part` numbers the pieces of one seed (the missing folds may
  take several)."""
  name = f'{chosen["name"]}-seed{seed}' + (f'-part{part}' if part else '')
  folder = ctx.workdir / MORE / name
  if not (folder / EXPERIMENT_FILE).is_file():
    costs = ctx.budget.costs
    room = ctx.budget.left() - TAIL * ctx.budget.seconds
    fitting = piece_size(costs, setup, room, len(folds), source.epochs, source.share)
    if fitting is None:
      return None, setup
    count, epochs = fitting
    # A member the deadline cuts after SHORTEST of the source's epochs ends there, as a piece that short would have
    # (it is priced at early stopping's share of its epochs, which a piece may not reach).
    with ctx.stop(TAIL * ctx.budget.seconds) as stop:
      outcomes, _ = ctx.round(source.base, [Entry(name, chosen['changes'])], folds[:count], (seed,), epochs,
                              ctx.workdir / MORE, stop, keep_cut_from=kept_after(source.epochs))
    setup = _measured_setup(ctx, outcomes.get(name), setup)
  return (folder if _finished(folder) else None), setup


def piece_size(costs, setup: float, room: float, folds: int, epochs: int,
               share: float = 1.0) -> tuple[int, int] | None:
  """(folds, epochs) of the piece that fits `room` seconds: the most folds at the configuration's epochs; else,
  so that the last seconds too are spent, one fold at fewer epochs (the schedule scaled alike), down to
  `SHORTEST` of them; None when not even that fits. A member is priced at `share` of its epochs (what early
  stopping left of the source's: the round's deadline still holds it if this one trains longer), and must reach
  `SHORTEST` of them in full, where a deadline that cuts it keeps it (`_train_piece`)."""
  least = kept_after(epochs)
  for e in range(epochs, least - 1, -1):
    fitting = [n for n in range(folds if e == epochs else 1, 0, -1)
               if setup + n * (costs.member + max(e * share, least) * costs.member_epoch) <= room]
    if fitting:
      return fitting[0], e
  return None


def _finished(folder: pathlib.Path) -> bool:
  return bool(member_workdirs(folder)) and (folder / oof.FILE).is_file() and (folder / EXPERIMENT_FILE).is_file()


def _record(folder: pathlib.Path) -> dict:
  return json.loads((folder / EXPERIMENT_FILE).read_text())


def _rows(folder: pathlib.Path) -> list[dict]:
  return _record(folder)['rows']


def _kept_rows(folder: pathlib.Path) -> pd.DataFrame:
  """The folder's out-of-fold rows of the models it kept (each split's kept seed): those the ensemble holds."""
  frame = oof.read(folder)
  kept = {(int(r['split']), int(r['seed'])) for r in _rows(folder) if r['kept']}
  return frame[[(int(s), int(d)) in kept for s, d in zip(frame['split'], frame['seed'])]]
