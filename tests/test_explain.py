"""--mode explain: what training writes at its end, the mode's options and errors, and the pieces."""
import re
import shutil

import numpy as np
import pandas as pd
import pytest

from fpclass.errors import UserInputError
from fpclass.explain import explanation
from fpclass.explain import figures as explain_figures
from fpclass.train.validation import validate
from tests import content
from tests.conftest import QUICK, launch, load_config


def report_links(workdir) -> list:
  return re.findall(r'\]\(([^)]+)\)', (workdir / 'report.md').read_text())


def test_training_ends_with_the_explanations(trained_quick):
  """configs/footprint.py turns on explain.after_training: the quick run wrote every explanation, and
  report.md links each one."""
  workdir, _, _ = trained_quick
  out = workdir / 'explain'
  for name in ('gradcam_worst.png', 'inference_grid.png', 'top_losses.csv', 'most_confused.csv',
               'feature_maps.png'):
    assert (out / name).is_file(), name
  content.check_plots(out, [p.name for p in out.glob('*.png')])
  links = report_links(workdir)
  assert {f'explain/{p.name}' for p in out.iterdir()} <= set(links)
  assert all((workdir / link).is_file() for link in links), [link for link in links if not (workdir / link).is_file()]
  # The ranking is evaluate's per-image loss, highest first.
  top = pd.read_csv(out / 'top_losses.csv', dtype={'id': str})
  evaluated = pd.read_csv(workdir / 'val_predictions.csv', dtype={'id': str})
  expected = evaluated.sort_values('loss', ascending=False, kind='stable')
  assert top['id'].tolist() == expected['id'].tolist()
  np.testing.assert_allclose(top['loss'], expected['loss'], rtol=1e-6)
  confused = pd.read_csv(out / 'most_confused.csv', dtype={'true': str, 'predicted': str})
  wrong = evaluated[evaluated['label'].astype(str) != evaluated['predicted'].astype(str)]
  assert confused['count'].sum() == len(wrong)
  report = (workdir / 'report.md').read_text()
  assert '## Explanations' in report and 'Grad-CAM at feature map `conv2`' in report


def test_explain_mode_options(trained_quick, tmp_path):
  workdir, env, _ = trained_quick
  copy = tmp_path / 'run'
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / 'explain')
  launch(QUICK, f'--workdir={copy}', '--mode=explain', '--config.explain.method=hirescam',
         '--config.explain.layer=conv1', '--config.explain.guided=False', '--config.explain.num_images=3',
         '--config.explain.inference_grid=0', '--config.explain.feature_image=-1',
         '--config.explain.target=label', env=env)
  written = sorted(p.name for p in (copy / 'explain').iterdir())
  assert 'gradcam_worst.png' in written and 'inference_grid.png' not in written
  assert 'feature_maps.png' not in written
  report = (copy / 'report.md').read_text()
  assert 'HiResCAM at feature map `conv1` for the label class' in report and 'Guided' not in report
  top_losses_table = report.split('### Top losses')[1].split('###')[0]
  assert len(re.findall(r'^\| \d+ \| ', top_losses_table, flags=re.M)) == 3
  assert all((copy / link).is_file() for link in report_links(copy))


def test_a_bad_layer_names_the_flag(trained_quick):
  workdir, env, _ = trained_quick
  result = launch(QUICK, f'--workdir={workdir}', '--mode=explain', '--config.explain.layer=conv9', env=env,
                  check=False)
  assert result.returncode == 2, result.stderr
  assert ("config.explain.layer='conv9': CAM layer 'conv9' is not a recorded feature map; this model records "
          "['conv1', 'conv2']") in result.stderr and 'Traceback' not in result.stderr


@pytest.mark.parametrize('key, value, message', [
    ('method', 'scorecam', "config.explain.method='scorecam': must be one of ['gradcam', 'gradcam++', 'hirescam']"),
    ('target', 'truth', "config.explain.target='truth'"),
    ('num_images', 0, 'config.explain.num_images=0: must be at least 1'),
    ('feature_image', -2, 'config.explain.feature_image=-2: must be at least -1'),
    ('alpha', 1.5, 'config.explain.alpha=1.5: must be in [0, 1]'),
])
def test_bad_explain_settings_name_the_flag(key, value, message):
  config = load_config('configs/footprint.py:quick', **{f'explain.{key}': value})
  with pytest.raises(UserInputError) as error:
    validate(config)
  assert message in str(error.value)


def test_select_groups_ranks_each_class_and_outcome_by_loss():
  labels = np.array([0, 0, 1, 1, 1, 0])
  predicted = np.array([0, 1, 1, 0, 1, 0])
  frame = pd.DataFrame({'index': np.arange(6), 'loss': [0.1, 2.0, 0.3, 1.5, 0.2, 0.4],
                        'correct': labels == predicted})
  groups = explanation.select_groups(frame, labels, ('a', 'b'), n=2)
  assert {k: g['index'].tolist() for k, g in groups.items()} == {
      'worst': [1, 3], 'a_correct': [5, 0], 'a_wrong': [1], 'b_correct': [2, 4], 'b_wrong': [3]}


def test_most_confused_counts_ordered_pairs():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
  predicted = np.array([1, 1, 0, 0, 1, 0, 2, 2, 1])
  frame = explanation.most_confused(labels, predicted, ('x', 'y', 'z'))
  assert frame.to_dict('records') == [
      dict(true='x', predicted='y', count=2, share_of_true=2 / 3),
      dict(true='y', predicted='x', count=1, share_of_true=0.5),
      dict(true='z', predicted='x', count=1, share_of_true=0.25),
      dict(true='z', predicted='y', count=1, share_of_true=0.25)]


def test_inference_grid_titles_are_green_when_right_and_red_when_wrong():
  image = np.zeros((6, 4, 1), np.uint8)
  tiles = [explain_figures.Tile(image, 'a', True), explain_figures.Tile(image, 'b', False)]
  figure = explain_figures.inference_grid(tiles)
  colours = {text.get_text(): text.get_color() for ax in figure.axes for text in ax.texts}
  assert colours == {'a': explain_figures.RIGHT, 'b': explain_figures.WRONG}
  assert figure.get_suptitle() == '1 of 2 right (green), 1 wrong (red)'
