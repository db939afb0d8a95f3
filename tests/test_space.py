"""The search space of `--mode auto` (fpclass/auto/space.py) without training: each entry's form, Optuna's name
for it, the values it is checked with before any work, each wrong entry as the one line that names it, the
trial's changes drawn from fixed parameters, and the first trial's parameters that give back the config itself."""
import math

import optuna
import pytest

from fpclass.auto.space import Candidate, Dimension, baseline_params, parse_space, sample
from fpclass.errors import UserInputError
from fpclass.modes.command_line import config_from_argv
from fpclass.train.plan import apply_changes

QUICK = ['launch.py', '--config=configs/footprint.py:quick']
OWN = Candidate('footprint_cnn', {})
RESNET = Candidate('resnet18', {'model.name': 'resnet18', 'train.learning_rate': 0.01})
BOTH = [OWN, RESNET]


def _config(*overrides):
  return config_from_argv([*QUICK, *overrides])


def _where(entry: str, i: int = 0) -> str:
  return f'config.auto.space[{i}] ({entry!r})'


def test_each_kind_of_entry_is_parsed_with_its_arguments_and_candidates():
  entries = ('model.name: backbones', 'train.weight_decay: log(1e-5, 1e-1)', ' train.epochs :int( 1, 3 ) ',
             'train.label_smoothing: float(0.0, 0.2) for resnet18', "augment.policy: choice('', 'trivialaugment')",
             "train.learning_rate: factor(0.5, 2.0, {'resnet18': 0.01}) for footprint_cnn,  resnet18")
  dims = parse_space(entries, _config(), BOTH)
  assert dims == [
      Dimension('model.name', 'backbones', (), entries[0]),
      Dimension('train.weight_decay', 'log', (1e-5, 1e-1), entries[1]),
      Dimension('train.epochs', 'int', (1, 3), entries[2]),
      Dimension('train.label_smoothing', 'float', (0.0, 0.2), entries[3], ('resnet18',)),
      Dimension('augment.policy', 'choice', ('', 'trivialaugment'), entries[4]),
      Dimension('train.learning_rate', 'factor', (0.5, 2.0, {'resnet18': 0.01}), entries[5],
                ('footprint_cnn', 'resnet18'))]
  assert [d.param for d in dims] == ['model.name', 'train.weight_decay', 'train.epochs',
                                     'train.label_smoothing for resnet18', 'augment.policy',
                                     'train.learning_rate/centre for footprint_cnn, resnet18']
  assert parse_space(('train.epochs: choice(2)',), _config(), [OWN])[0].args == (2,)   # one value: a tuple still


def test_an_entry_applies_to_the_candidates_it_names_that_have_its_key():
  config = _config()
  configs = {c.name: apply_changes(config, c.changes, c.name) for c in BOTH}
  kernel = Dimension('model.kernel_size', 'int', (3, 5), '')   # the footprint CNN's key alone
  assert kernel.applies(OWN, configs[OWN.name]) and not kernel.applies(RESNET, configs[RESNET.name])
  named = Dimension('train.epochs', 'int', (1, 3), '', ('resnet18',))
  assert not named.applies(OWN, configs[OWN.name]) and named.applies(RESNET, configs[RESNET.name])
  assert not Dimension('train.epochs.deeper', 'int', (1, 3), '').applies(OWN, configs[OWN.name])


def test_the_values_checked_before_any_work_are_a_choice_s_values_and_a_range_s_ends():
  config = _config('--config.train.learning_rate=0.002')
  configs = {c.name: apply_changes(config, c.changes, c.name) for c in BOTH}
  factor = Dimension('train.learning_rate', 'factor', (0.5, 4.0, {'resnet18': 0.1}), '')
  assert factor.centre(OWN, configs[OWN.name]) == 0.002   # its own value
  assert factor.centre(RESNET, configs[RESNET.name]) == 0.1   # the dict's, not its own 0.01
  assert factor.ends(OWN, configs[OWN.name]) == (0.002 * 0.5, 0.002 * 4.0)
  assert factor.ends(RESNET, configs[RESNET.name]) == (0.1 * 0.5, 0.1 * 4.0)
  assert Dimension('train.learning_rate', 'factor', (0.5, 4.0), '').ends(RESNET, configs[RESNET.name]) == \
      (0.01 * 0.5, 0.01 * 4.0)
  assert Dimension('train.epochs', 'choice', (1, 2, 7), '').ends(OWN, configs[OWN.name]) == (1, 2, 7)
  assert Dimension('train.epochs', 'int', (1, 9), '').ends(OWN, configs[OWN.name]) == (1, 9)


# Each wrong entry: the line the user sees (`config.auto.space[i] (entry): ...`).
WRONG = [
    ('x y', "write 'key: kind(arguments)', e.g. 'train.learning_rate: log(1e-4, 1e-2)'"),
    ('train.epochs: between(1, 3)', "unknown kind 'between'; use one of ('log', 'float', 'int', 'choice', 'factor', "
                                    "'backbones')"),
    ('train.epochs: int(1, 3', "write 'key: kind(arguments)', e.g. 'train.learning_rate: log(1e-4, 1e-2)'"),
    ('train.epochs: int(1, three)', 'its arguments are not Python literals'),
    ('train.epochs: int(1 3)', 'its arguments are not Python literals'),
    ('train.epochs: backbones', "'backbones' chooses model.name among the screened candidates: "
                                "'model.name: backbones'"),
    ('model.name: backbones(1)', "'backbones' chooses model.name among the screened candidates: "
                                 "'model.name: backbones'"),
    ('model.name: backbones for resnet18', "'backbones' chooses model.name among the screened candidates: "
                                           "'model.name: backbones'"),
    ('train.epochs: int(1, 3) for nope', "`for` names 'nope'; the candidates are footprint_cnn, resnet18"),
    ('train.epochs: int(1, 3) for resnet18,', "`for` names ''; the candidates are footprint_cnn, resnet18"),
    ('train.learnin_rate: log(1e-4, 1e-2)', 'train.learnin_rate is not a config key'),
    ('model.nokey: float(0, 1)', 'model.nokey is not a config key of any candidate model (footprint_cnn, resnet18)'),
    ('model.kernel_size: int(3, 5) for resnet18', 'model.kernel_size is not a config key of any candidate model '
                                                  '(resnet18)'),
    ('train.learning_rate: log(0, 1e-2)', 'log(low, high) needs two numbers, low < high and low > 0'),
    ('train.learning_rate: log(-1e-3, 1e-2)', 'log(low, high) needs two numbers, low < high and low > 0'),
    ('train.learning_rate: log(1e-2, 1e-3)', 'log(low, high) needs two numbers, low < high and low > 0'),
    ('train.label_smoothing: float(0.1, 0.1)', 'float(low, high) needs two numbers, low < high'),
    ('train.label_smoothing: float(0.0)', 'float(low, high) needs two numbers, low < high'),
    ('train.label_smoothing: float(0.0, 0.1, 0.2)', 'float(low, high) needs two numbers, low < high'),
    ('train.label_smoothing: float(0.0, inf)', 'its arguments are not Python literals'),
    ("train.label_smoothing: float(0.0, float('nan'))", 'its arguments are not Python literals'),
    ("train.label_smoothing: float(0.0, 'a')", 'float(low, high) needs two numbers, low < high'),
    ('train.label_smoothing: float(False, True)', 'float(low, high) needs two numbers, low < high'),
    ('train.label_smoothing: float(0.0, 1e999)', 'float(low, high) needs two numbers, low < high'),
    ('train.epochs: int(1, 2.5)', 'int(low, high) needs two whole numbers, low < high'),
    ('train.epochs: int(1.0, 3)', 'int(low, high) needs two whole numbers, low < high'),
    ('train.epochs: choice()', 'choice(a, b, ...) needs at least one value'),
    ('train.learning_rate: factor(0.5)', 'factor(low, high) or factor(low, high, {candidate: centre, ...}) needs '
                                         '0 < low < high'),
    ('train.learning_rate: factor(0, 2)', 'factor(low, high) or factor(low, high, {candidate: centre, ...}) needs '
                                          '0 < low < high'),
    ('train.learning_rate: factor(2, 2)', 'factor(low, high) or factor(low, high, {candidate: centre, ...}) needs '
                                          '0 < low < high'),
    ("train.learning_rate: factor(0.5, 'x')", 'factor(low, high) or factor(low, high, {candidate: centre, ...}) '
                                              'needs 0 < low < high'),
    ('train.learning_rate: factor(0.5, 2, 3)', 'factor(low, high) or factor(low, high, {candidate: centre, ...}) '
                                               'needs 0 < low < high'),
    ('train.learning_rate: factor(0.5, 2, {}, {})', 'factor(low, high) or factor(low, high, {candidate: centre, '
                                                    '...}) needs 0 < low < high'),
    ("train.learning_rate: factor(0.5, 2, {'nope': 1e-3})", "the centre of 'nope': no such candidate; the "
                                                            'candidates are footprint_cnn, resnet18'),
    ("train.learning_rate: factor(0.5, 2, {'resnet18': 0})", "the centre of 'resnet18' is 0; a factor needs a "
                                                             'centre > 0'),
    ("train.learning_rate: factor(0.5, 2, {'resnet18': 'a'})", "the centre of 'resnet18' is 'a'; a factor needs a "
                                                               'centre > 0'),
    ('train.label_smoothing: factor(0.5, 2)', "footprint_cnn's train.label_smoothing is 0.0; a factor needs a "
                                              'centre > 0 (give one: factor(low, high, {name: centre}))'),
    ('train.label_smoothing: float(0.0, 1.5)', 'train.label_smoothing=1.5 for candidate footprint_cnn cannot train: '
                                               'config.train.label_smoothing=1.5: must be in [0, 1)'),
    ('train.learning_rate: choice(0.001, 0.0)', 'train.learning_rate=0.0 for candidate footprint_cnn cannot train: '
                                                'a learning rate must be > 0 (0 trains nothing)'),
    ('train.learning_rate: log(1e-3, 1e999)', 'log(low, high) needs two numbers, low < high and low > 0'),
]


@pytest.mark.parametrize('entry, message', WRONG)
def test_a_wrong_entry_is_one_line_naming_it(entry, message):
  with pytest.raises(UserInputError) as raised:
    parse_space(('train.epochs: int(1, 3)', entry), _config(), BOTH)
  assert str(raised.value) == f'{_where(entry, 1)}: {message}'


def test_a_key_listed_twice_for_a_candidate_is_refused_and_named():
  config = _config()
  with pytest.raises(UserInputError) as raised:
    parse_space(('train.epochs: int(1, 3)', 'train.epochs: choice(2, 4)'), config, [OWN])
  assert str(raised.value) == 'config.auto.space: train.epochs is listed twice'
  with pytest.raises(UserInputError) as raised:
    parse_space(('train.epochs: int(1, 3) for resnet18', 'train.epochs: choice(2, 4)'), config, BOTH)
  assert str(raised.value) == 'config.auto.space: train.epochs is listed twice for candidate resnet18'
  with pytest.raises(UserInputError) as raised:
    parse_space(('model.name: backbones', 'model.name: backbones'), config, BOTH)
  assert str(raised.value) == 'config.auto.space: model.name is listed twice for candidate footprint_cnn'
  # once for each candidate: no error
  parse_space(('train.epochs: int(1, 3) for resnet18', 'train.epochs: choice(2, 4) for footprint_cnn'), config, BOTH)


def test_every_value_is_checked_with_each_candidate_it_applies_to_and_the_first_bad_one_named():
  config = _config()
  # Only the resnet's end of the factor is too large for the label smoothing: its own centre is 0.4, the CNN's 0.1.
  entry = "train.label_smoothing: factor(0.5, 2.0, {'footprint_cnn': 0.1, 'resnet18': 0.6})"
  with pytest.raises(UserInputError) as raised:
    parse_space((entry,), config, BOTH)
  assert str(raised.value) == (f'{_where(entry)}: train.label_smoothing=1.2 for candidate resnet18 cannot train: '
                               'config.train.label_smoothing=1.2: must be in [0, 1)')
  # A short choice beside a longer one: its last value is tried with the other's later ones.
  entries = ('train.label_smoothing: choice(0.0, 0.1, 0.2, 0.95)', 'train.epochs: choice(0)')
  with pytest.raises(UserInputError) as raised:
    parse_space(entries, config, [OWN])
  assert str(raised.value) == (f'{_where(entries[1], 1)}: train.epochs=0 cannot train: config.train.epochs=0: must '
                               'be at least 1')
  entries = ('train.epochs: choice(1, 2, 3)', 'train.label_smoothing: choice(0.0, 0.1, 0.2, 0.95, 1.0)')
  with pytest.raises(UserInputError) as raised:
    parse_space(entries, config, [OWN])
  assert str(raised.value) == (f'{_where(entries[1], 1)}: train.label_smoothing=1.0 cannot train: '
                               'config.train.label_smoothing=1.0: must be in [0, 1)')
  # Values each fine alone and together: accepted.
  parse_space(('train.epochs: choice(1, 2, 3)', 'train.label_smoothing: float(0.0, 0.9)',
               'train.learning_rate: log(1e-5, 1.0)'), config, BOTH)


class Fixed(optuna.trial.FixedTrial):
  """A trial with fixed parameters that records which were asked."""

  def __init__(self, params):
    super().__init__(params)
    self.asked = []

  def suggest_float(self, name, low, high, *, step=None, log=False):
    self.asked.append((name, 'float', low, high, log))
    return super().suggest_float(name, low, high, step=step, log=log)

  def suggest_int(self, name, low, high, *, step=1, log=False):
    self.asked.append((name, 'int', low, high, log))
    return super().suggest_int(name, low, high, step=step, log=log)

  def suggest_categorical(self, name, choices):
    self.asked.append((name, 'choice', tuple(choices)))
    return super().suggest_categorical(name, choices)


SPACE = ('model.name: backbones', 'train.learning_rate: factor(0.25, 4.0)', 'train.epochs: int(1, 9)',
         'train.label_smoothing: float(0.0, 0.2) for resnet18', 'train.weight_decay: log(1e-6, 1e-2)',
         "augment.policy: choice('', 'trivialaugment')", 'data.image_size: choice((24, 16), (32, 24))',
         'model.kernel_size: choice(3, 5)')


def test_a_trial_s_changes_are_the_candidate_s_settings_and_each_entry_that_applies_to_it_drawn():
  config = _config('--config.train.learning_rate=0.002')
  dims = parse_space(SPACE, config, BOTH)
  trial = Fixed({'model.name': 'resnet18', 'train.learning_rate/centre': 2.0, 'train.epochs': 4,
                 'train.label_smoothing for resnet18': 0.15, 'train.weight_decay': 1e-4,
                 'augment.policy': "'trivialaugment'", 'data.image_size': '(32, 24)'})
  name, changes = sample(trial, dims, config, BOTH)
  assert name == 'resnet18'
  assert changes == {'model.name': 'resnet18', 'train.learning_rate': 0.01 * 2.0, 'train.epochs': 4,
                     'train.label_smoothing': 0.15, 'train.weight_decay': 1e-4, 'augment.policy': 'trivialaugment',
                     'data.image_size': (32, 24)}
  assert isinstance(changes['train.epochs'], int) and isinstance(changes['train.weight_decay'], float)
  assert trial.asked == [
      ('model.name', 'choice', ('footprint_cnn', 'resnet18')),
      ('train.learning_rate/centre', 'float', 0.25, 4.0, True), ('train.epochs', 'int', 1, 9, False),
      ('train.label_smoothing for resnet18', 'float', 0.0, 0.2, False),
      ('train.weight_decay', 'float', 1e-6, 1e-2, True),
      ('augment.policy', 'choice', ("''", "'trivialaugment'")),
      ('data.image_size', 'choice', ('(24, 16)', '(32, 24)'))]   # the kernel size is not the resnet's key


def test_the_own_candidate_is_asked_only_its_entries_and_a_factor_of_one_gives_its_value_back():
  config = _config('--config.train.learning_rate=0.003')
  dims = parse_space(SPACE, config, BOTH)
  factor = 0.1 / 0.3   # 0.003 times it is 0.001 only up to rounding
  trial = Fixed({'model.name': 'footprint_cnn', 'train.learning_rate/centre': 1.0, 'train.epochs': 9,
                 'train.weight_decay': 1e-2, 'augment.policy': "''", 'data.image_size': '(24, 16)',
                 'model.kernel_size': '5'})
  name, changes = sample(trial, dims, config, BOTH)
  assert name == 'footprint_cnn' and 'train.label_smoothing' not in changes
  assert changes == {'train.learning_rate': 0.003, 'train.epochs': 9, 'train.weight_decay': 1e-2,
                     'augment.policy': '', 'data.image_size': (24, 16), 'model.kernel_size': 5}
  trial = Fixed({'model.name': 'footprint_cnn', 'train.learning_rate/centre': factor, 'train.epochs': 1,
                 'train.weight_decay': 1e-6, 'augment.policy': "''", 'data.image_size': '(24, 16)',
                 'model.kernel_size': '3'})
  assert sample(trial, dims, config, BOTH)[1]['train.learning_rate'] == 0.003 * factor
  # Without a backbones entry the first candidate is the trial's.
  dims = parse_space(('train.epochs: int(1, 9)',), config, BOTH)
  assert sample(Fixed({'train.epochs': 2}), dims, config, BOTH) == ('footprint_cnn', {'train.epochs': 2})
  assert sample(Fixed({'train.epochs': 2}), dims, config, [RESNET, OWN]) == (
      'resnet18', {'model.name': 'resnet18', 'train.learning_rate': 0.01, 'train.epochs': 2})


def test_a_factor_close_to_one_gives_the_own_value_exactly_and_one_further_off_does_not():
  config = _config('--config.train.learning_rate=0.003')
  dims = parse_space(('train.learning_rate: factor(0.25, 4.0)',), config, [OWN])
  for factor in (1.0 + 5e-10, 1.0 - 5e-10):
    assert sample(Fixed({'train.learning_rate/centre': factor}), dims, config, [OWN])[1] == \
        {'train.learning_rate': 0.003}
  off = 1.0 + 5e-9
  assert sample(Fixed({'train.learning_rate/centre': off}), dims, config, [OWN])[1] == \
      {'train.learning_rate': 0.003 * off}


def test_the_first_trial_gives_back_the_config_for_each_kind_of_entry():
  config = _config('--config.train.learning_rate=0.002', '--config.train.epochs=4', '--config.train.ema_decay=0.0',
                   '--config.model.kernel_size=5')
  dims = parse_space(('model.name: backbones', 'train.learning_rate: factor(0.25, 4.0)', 'train.epochs: int(1, 9)',
                      'train.weight_decay: log(1e-6, 1e-2)', 'model.kernel_size: choice(3, 5)',
                      'train.ema_decay: choice(False, 0, 0.999)', 'train.label_smoothing: float(0.0, 0.2) for resnet18',
                      'train.tensorboard: choice(True, False)'), config, BOTH)
  params = baseline_params([*dims, Dimension('train.nesterov', 'float', (0, 1), '')], config, BOTH)
  assert params == {'model.name': 'footprint_cnn', 'train.learning_rate/centre': 1.0, 'train.epochs': 4,
                    'model.kernel_size': '5', 'train.ema_decay': '0', 'train.tensorboard': repr(config.train.tensorboard)}
  assert isinstance(params['train.epochs'], int) and isinstance(params['train.learning_rate/centre'], float)
  # ema_decay 0.0 is the choice's 0 (equal, not a bool), never its False; a bool config value matches only a bool,
  # and a range never gives one back (True would be 1.0)
  name, changes = sample(Fixed(params | {'train.weight_decay': 1e-3}), dims, config, BOTH)
  assert name == 'footprint_cnn' and changes['train.ema_decay'] == 0 and changes['train.learning_rate'] == 0.002


def test_the_first_trial_keeps_a_float_range_s_value_as_a_float_and_a_factor_at_its_ends():
  config = _config('--config.train.label_smoothing=0.1', '--config.train.learning_rate=0.002')
  dims = parse_space(('train.label_smoothing: float(0, 0.5)', 'train.learning_rate: factor(0.5, 2.0, '
                      "{'footprint_cnn': 0.001})"), config, [OWN])
  params = baseline_params(dims, config, [OWN])
  assert params == {'train.label_smoothing': 0.1, 'train.learning_rate/centre': 2.0}
  assert isinstance(params['train.label_smoothing'], float)
  dims = parse_space(("train.learning_rate: factor(0.5, 2.0, {'footprint_cnn': 0.004})",), config, [OWN])
  assert baseline_params(dims, config, [OWN]) == {'train.learning_rate/centre': 0.5}
  # a ratio off an end by rounding alone is clipped onto it; one further off is left to the sampler
  dims = parse_space(("train.learning_rate: factor(0.5, 2.0, {'footprint_cnn': 0.0009999999999995})",), config,
                     [OWN])
  assert 0.002 / 0.0009999999999995 > 2.0 and baseline_params(dims, config, [OWN]) == {'train.learning_rate/centre': 2.0}
  dims = parse_space(("train.learning_rate: factor(0.5, 2.0, {'footprint_cnn': 0.004000000000001})",), config,
                     [OWN])
  assert 0.002 / 0.004000000000001 < 0.5 and baseline_params(dims, config, [OWN]) == {'train.learning_rate/centre': 0.5}
  for centre in (0.000999, 0.00401):
    dims = parse_space((f"train.learning_rate: factor(0.5, 2.0, {{'footprint_cnn': {centre}}})",), config, [OWN])
    assert baseline_params(dims, config, [OWN]) == {}


def test_without_the_config_s_own_model_among_the_candidates_the_first_is_given_back_but_not_chosen():
  config = _config('--config.train.learning_rate=0.002')
  dims = parse_space(('model.name: backbones', 'train.learning_rate: log(1e-5, 1e-1)'), config, [RESNET])
  assert baseline_params(dims, config, [RESNET]) == {'train.learning_rate': 0.01}
  assert math.isclose(baseline_params(dims, config, [RESNET, OWN])['train.learning_rate'], 0.002)
  assert baseline_params(dims, config, [RESNET, OWN])['model.name'] == 'footprint_cnn'
