"""A trained model's validation predictions as evaluate and explain share them: the one batch every split
is predicted in, and the table of predictions, probabilities and losses."""
import numpy as np
import pandas as pd

from fpclass.analysis.metrics import binary_log_losses
from fpclass.config.run import RunSettings
from fpclass.train.steps import validation_batch
from fpclass.train.task import common_batch


def prediction_chunk(run: RunSettings, dataset) -> int:
  """The batch evaluate and explain predict every split in: the batch each epoch validated in
  (`fpclass.train.steps.validation_batch`), or the largest split they score if that is smaller, the others
  padded up to it, so training's predict program serves them (compiled, and on a GPU autotuned, already). One
  batch shape is one compiled program for all the splits; a batch per split size compiled (and traced) the
  network again for each, seconds per split for a large backbone. The padding costs at most the largest
  split's work once more per split."""
  settings = run.eval
  batch = validation_batch(settings, run.train.batch_size)
  splits = [dataset.val, dataset.test if dataset.test is not None and dataset.test.labels is not None else None,
            dataset.train if settings.score_train else None]
  return common_batch(batch, [len(split) for split in splits if split is not None])


def tags_text(row, class_names) -> str:
  """A multi-label 0/1 row as Planet writes it: its class names, space-separated, in class order."""
  return ' '.join(class_names[k] for k in np.flatnonzero(row))


def predictions_frame(split, probs, class_names, thresholds=None) -> pd.DataFrame:
  """One row per image: id, label, predicted, p_<class> per class, loss (the image's cross-entropy).
  Multi-label probabilities ((N, K) sigmoids, with `thresholds`, default 0.5): label and predicted are tag
  lists, and loss is the image's binary cross-entropy summed over the classes."""
  if split.labels is not None and np.ndim(split.labels) == 2:
    return _multilabel_frame(split, probs, class_names, 0.5 if thresholds is None else thresholds)
  pred = probs.argmax(1)
  frame = pd.DataFrame({'id': split.ids, 'label': [class_names[i] for i in split.labels],
                        'predicted': [class_names[i] for i in pred]})
  for i, name in enumerate(class_names):
    frame[f'p_{name}'] = probs[:, i]
  frame['loss'] = -np.log(np.clip(probs[np.arange(len(pred)), split.labels], 1e-12, 1.0))
  return frame


def _multilabel_frame(split, probs, class_names, thresholds) -> pd.DataFrame:
  pred = (probs >= np.asarray(thresholds, np.float64)).astype(np.uint8)
  frame = pd.DataFrame({'id': split.ids, 'label': [tags_text(r, class_names) for r in split.labels],
                        'predicted': [tags_text(r, class_names) for r in pred]})
  for i, name in enumerate(class_names):
    frame[f'p_{name}'] = probs[:, i]
  frame['loss'] = binary_log_losses(split.labels, probs).sum(axis=1)
  return frame
