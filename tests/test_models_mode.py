"""`--mode models` (fpclass.modes.models over fpclass.models.listing): the registered names by pattern and
family with parameters, input size and verified parity; close matches for a typo; the ported families for an
unported timm architecture."""
import pytest

from fpclass.config.schema import base_config
from fpclass.errors import UserInputError
from fpclass.models import listing
from fpclass.modes import models as models_mode
from tests.conftest import launch


def test_a_pattern_selects_registered_and_timm_names():
  names = [row.name for row in listing.rows('resnet10t', parameters=False)]
  assert names == ['timm_resnet10t']
  rows = listing.rows('convnext*', parameters=False)
  assert {'convnext_tiny', 'timm_convnext_atto', 'timm_convnextv2_huge'} <= {row.name for row in rows}
  assert {row.family for row in listing.rows('*', family='timm', parameters=False)} >= {'ResNet family',
                                                                                           'Vision Transformer'}


def test_the_mode_prints_parameters_input_size_and_verification(capsys):
  config = base_config()
  config.models.pattern = 'timm_resnet10t'
  (row,) = models_mode.list_models(config, None)
  out = capsys.readouterr().out
  assert row.parameters == 5_435_488 and row.input_size == (176, 176)   # timm's resnet10t, 1000 classes
  assert 'timm_resnet10t' in out and '5.4M' in out and '176x176' in out


def test_a_typo_gets_close_names():
  with pytest.raises(UserInputError, match="matches no registered model; close: .*timm_convnext_tiny"):
    listing.rows('convnext_tny')


def test_an_unported_architecture_gets_the_ported_families_in_one_line():
  with pytest.raises(UserInputError) as error:
    listing.rows('swin_tiny_patch4_window7_224')
  assert '\n' not in str(error.value) and 'ResNet family' in str(error.value)
  with pytest.raises(UserInputError, match='unknown model; timm checkpoints load for the families .*ConvNeXt'):
    listing.models.get_spec('timm_swin_tiny_patch4_window7_224')


def test_launch_lists_models_without_a_config_or_a_run_folder(tmp_path):
  """`python launch.py --mode models` as docs/hub.md shows it: no --config, no --workdir, nothing written."""
  result = launch('--mode=models', '--config.models.pattern=timm_resnet10t', cwd=tmp_path)
  assert result.stdout.splitlines()[0] == "1 registered model(s) matching 'timm_resnet10t':"
  assert 'timm_resnet10t' in result.stdout and '176x176' in result.stdout
  assert list(tmp_path.iterdir()) == []
  refused = launch('--mode=train', check=False, cwd=tmp_path)   # every other mode still needs its run folder
  assert refused.returncode == 2 and refused.stderr.strip() == 'fpclass: error: --workdir is required for --mode train'
