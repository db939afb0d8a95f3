"""--mode export: the ONNX file (through onnxruntime) and the jax.export artifact (deserialized, no fpclass
code) each equal fpclass's logits, for a seed CNN, a torchvision port and a Keras port."""
import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import onnxruntime
import pytest
from jax import lax

from fpclass.config.outputs import OodSettings
from fpclass.config.run import RunSettings
from fpclass.config.schema import base_config
from fpclass.deploy import export as export_core
from fpclass.deploy import ood
from fpclass.deploy import ood_scores as ood_math
from fpclass.errors import UserInputError
from fpclass.infer.inference import load_trained
from fpclass.modes import export as export_mode
from fpclass.train.task import build_task
from tests.conftest import QUICK, load_config

CLASSES = ('cat', 'dog', 'fox')
# jax2onnx 0.13 reads jax.core.DropVar, which jax deprecates: its warning, not ours.
pytestmark = pytest.mark.filterwarnings('ignore:jax.core.DropVar is deprecated:DeprecationWarning')


def random_model(name: str, image_size, channels: int, **fields):
  """(task, variables) for a freshly initialised `name` (random weights: parity needs no training)."""
  config = base_config()
  config.data.image_size, config.data.channels = image_size, channels
  config.model.name = name
  for key, value in fields.items():
    config.model[key] = value
  task = build_task(RunSettings.from_config(config), CLASSES, np.arange(len(CLASSES)), steps_per_epoch=1)
  # Shapes only, filled from numpy: initialising through JAX would compile the whole init for nothing.
  abstract = jax.eval_shape(lambda: task.init_variables(jax.random.PRNGKey(0), (*image_size, channels)))
  rng = np.random.default_rng(1)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if 'var' in name.split("'")[-2]:  # batch-norm variances must be positive
      return rng.uniform(0.5, 1.5, leaf.shape).astype(leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 1
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(leaf.dtype)

  variables = jax.tree_util.tree_map_with_path(fill, abstract)
  return task, {k: v for k, v in variables.items() if v or k == 'params'}


def run_onnx(path, images, outputs=('logits',)):
  session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
  assert [i.name for i in session.get_inputs()] == ['images'] and session.get_inputs()[0].type == 'tensor(uint8)'
  got = session.run(list(outputs), {'images': images})
  return got[0] if len(outputs) == 1 else tuple(got)


def run_jax_export(path, images, outputs=('logits',)):
  # Only jax: the artifact carries its own computation, weights and preprocessing.
  got = jax.export.deserialize(bytearray(path.read_bytes())).call(images)
  return tuple(np.asarray(g) for g in got) if len(outputs) > 1 else np.asarray(got)


def batch_of(artifact: dict, images):
  """The images an artifact takes: any batch, or its fixed one."""
  fixed = artifact['batch_size']
  return images if fixed == 'any' else images[:fixed]


# height != width in every case; resnet18 and the Keras VGG16 also have RGB input and ImageNet normalisation
# (the Keras one in BGR order) inside the graph. resnet18's layout with one basic block a stage (model.layers)
# exports the same ops (stem, max pool, residual adds, the strided 1x1 shortcuts of stages 2-4, BN, the head)
# as its 2 a stage, in half the graph to convert, serialise and run.
@pytest.mark.parametrize('name, image_size, channels, fields', [
    ('footprint_cnn', (120, 80), 1, {'conv_channels': (8, 16), 'fc_sizes': (32,), 'dropout': 0.5, 'batch_norm': True}),
    ('resnet18', (64, 48), 3, {'layers': (1, 1, 1, 1)}),
    ('keras_vgg16', (48, 64), 3, {'top': 'avg'}),
], ids=['footprint_cnn', 'resnet18', 'keras_vgg16'])
def test_exported_artifacts_equal_fpclass_logits(tmp_path, name, image_size, channels, fields):
  task, variables = random_model(name, image_size, channels, **fields)
  written = export_core.export_model(task, variables, (*image_size, channels), tmp_path,
                                     description={'class_names': list(CLASSES), 'model': name})
  images = np.random.default_rng(7).integers(0, 256, (3, *image_size, channels), dtype=np.uint8)
  predict = jax.jit(task.predict)
  description = json.loads(written['description'].read_text())
  assert description['class_names'] == list(CLASSES)
  assert description['input']['shape'] == ['batch', *image_size, channels] and description['input']['dtype'] == 'uint8'

  for fmt, run in (('onnx', run_onnx), ('stablehlo', run_jax_export)):
    batch = batch_of(description['artifacts'][fmt], images)
    expected = np.asarray(predict(variables['params'], variables.get('batch_stats', {}), batch))
    got = run(written[fmt], batch)
    assert got.shape == (len(batch), len(CLASSES))
    assert np.max(np.abs(got - expected)) <= 1e-5, f'{fmt}: {np.max(np.abs(got - expected))}'
  assert description['artifacts']['stablehlo']['batch_size'] == 'any'
  model = onnx.load(str(written['onnx']))
  assert json.loads({p.key: p.value for p in model.metadata_props}['class_names']) == list(CLASSES)


@pytest.mark.parametrize('score', [OodSettings().score, 'class_mahalanobis', 'vim'])
def test_export_mode_on_a_trained_workdir(trained_quick, tmp_path, monkeypatch, score):
  """Both artifacts: the logits, and the OOD score as the second output, each against fpclass's own (the score
  recomputed on the host in float64 from the model's logits and features, not by the program export traced);
  the default score, and two whose programs hold other ops (a batched product; the last layer again)."""
  workdir = tmp_path / 'run'
  shutil.copytree(trained_quick[0], workdir)  # export writes into its workdir; the shared one stays as trained
  monkeypatch.setenv('FPCLASS_CACHE', trained_quick[1]['FPCLASS_CACHE'])   # its data: the OOD fit reads it
  # 15 validation images: a 25% target leaves a finite threshold (a 5% one needs 19).
  config = load_config(QUICK.split('=', 1)[1], **{'export.folder': 'exported', 'ood.false_rejection': 0.25,
                                                  'ood.score': score})
  written = export_mode.export(config, workdir)
  assert {p.name for p in (workdir / 'exported').iterdir()} == {'model.onnx', 'model.jax_export', 'model.json'}
  description = json.loads(written['description'].read_text())
  metadata = json.loads((workdir / 'metadata.json').read_text())
  assert description['class_names'] == metadata['class_names'] and description['model'] == 'footprint_cnn'
  assert description['epoch'] >= 1 and description['normalisation'] == metadata['normalisation']

  stored = ood.load(workdir / ood.FILE, 'softmax')
  assert description['ood']['output'] == 'ood_score' and description['ood']['score'] == score
  assert description['ood']['threshold'] == stored.threshold and np.isfinite(stored.threshold)
  model = onnx.load(str(written['onnx']))
  assert json.loads({p.key: p.value for p in model.metadata_props}['ood'])['threshold'] == stored.threshold

  trained = load_trained(config, workdir)
  images = np.random.default_rng(3).integers(0, 256, (5, 120, 80, 1), dtype=np.uint8)
  expected = trained.logits(images, batch_size=5)
  logits, features = ood.outputs(trained, images, 5)
  expected_score = ood_math.scores(stored.statistics, logits, features, images=images)   # numpy, float64
  for fmt, run in (('onnx', run_onnx), ('stablehlo', run_jax_export)):
    batch = batch_of(description['artifacts'][fmt], images)
    got, score = run(written[fmt], batch, ('logits', 'ood_score'))
    assert np.max(np.abs(got - expected[:len(batch)])) <= 1e-5
    assert score.shape == (len(batch),), fmt   # float32 against float64: relative
    np.testing.assert_allclose(score, expected_score[:len(batch)], rtol=1e-5, atol=1e-5, err_msg=fmt)


@dataclasses.dataclass(frozen=True)
class Upsampler:
  """A model with an op jax2onnx 0.13 cannot convert: lax.pad with interior padding."""
  num_classes: int = 2
  head: str = 'softmax'

  def predict(self, params, batch_stats, images):
    x = lax.pad(images.astype(jnp.float32), 0.0, ((0, 0, 0), (0, 0, 1), (0, 0, 1), (0, 0, 0)))
    return jnp.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], axis=1) * params['scale']


def test_a_model_that_cannot_be_exported_names_the_op_and_leaves_no_file(tmp_path):
  folder = tmp_path / 'export'
  with pytest.raises(UserInputError, match=r"model.onnx: jax2onnx cannot convert the op 'pad' of this model "
                                           r'with batch size 2 \(NotImplementedError: lax.pad with interior'):
    export_core.export_model(Upsampler(), {'params': {'scale': jnp.ones(())}}, (6, 4, 1), folder, batch_size=2)
  assert not folder.exists() or not any(folder.iterdir())
  # The same model exports to StableHLO, which has no such gap.
  written = export_core.export_model(Upsampler(), {'params': {'scale': jnp.ones(())}}, (6, 4, 1), folder,
                                     formats=('stablehlo',))
  assert sorted(p.name for p in folder.iterdir()) == ['model.jax_export', 'model.json']
  assert run_jax_export(written['stablehlo'], np.ones((2, 6, 4, 1), np.uint8)).shape == (2, 2)
