"""A trained model's validation predictions as evaluate and explain share them: the one batch every split
is predicted in, and the table of predictions, probabilities and losses."""
import numpy as np
import pandas as pd

from fpclass.train.task import common_batch


def prediction_chunk(config, dataset) -> int:
  """The batch evaluate and explain predict every split in: config.eval.batch_size, or the largest split
  they score if that is smaller, the others padded up to it. One batch shape is one compiled program for
  all the splits; a batch per split size compiled (and traced) the network again for each, seconds per
  split for a large backbone. The padding costs at most the largest split's work once more per split."""
  splits = [dataset.val, dataset.test if dataset.test is not None and dataset.test.labels is not None else None,
            dataset.train if config.eval.score_train else None]
  return common_batch(config.eval.batch_size, [len(split) for split in splits if split is not None])


def predictions_frame(split, probs, class_names) -> pd.DataFrame:
  pred = probs.argmax(1)
  frame = pd.DataFrame({'id': split.ids, 'label': [class_names[i] for i in split.labels],
                        'predicted': [class_names[i] for i in pred]})
  for i, name in enumerate(class_names):
    frame[f'p_{name}'] = probs[:, i]
  frame['loss'] = -np.log(np.clip(probs[np.arange(len(pred)), split.labels], 1e-12, 1.0))
  return frame
