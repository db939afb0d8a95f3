"""config.train.class_weights read against a run's classes and training labels: the weights the loss gives each class
(`fpclass.train.task.Task.loss`), or a multi-label class's positives."""
import numpy as np

from fpclass.errors import UserInputError


def class_weights(spec: str, class_names, train_labels) -> tuple | None:
  """'' -> None; 'auto' -> n / (k * count) as scikit-learn's 'balanced'; 'a:1,b:2.5' -> by class name.

  Multi-label labels ((N, K) 0/1 rows) get positive weights (torch's `pos_weight`): 'auto' gives each class
  its negatives / positives (a class with no positive gets 1), and 'a:2.5' sets one class's."""
  spec = (spec or '').strip()
  if not spec:
    return None
  k = len(class_names)
  train_labels = np.asarray(train_labels)
  if spec == 'auto' and train_labels.ndim == 2:
    positives = train_labels.sum(0).astype(np.float64)
    return tuple(float((len(train_labels) - p) / p) if p else 1.0 for p in positives)
  if spec == 'auto':
    counts = np.bincount(train_labels, minlength=k).astype(np.float64)
    return tuple(float(len(train_labels) / (k * c)) for c in counts)
  weights = {}
  for item in spec.split(','):
    name, sep, value = item.rpartition(':')
    if not sep or name.strip() not in class_names:
      raise UserInputError(f'config.train.class_weights={spec!r}: {item.strip()!r} is not "class:weight" for '
                           f'a class in {list(class_names)}')
    try:
      weights[name.strip()] = float(value)
    except ValueError:
      raise UserInputError(f'config.train.class_weights={spec!r}: {value!r} is not a number') from None
  return tuple(weights.get(c, 1.0) for c in class_names)
