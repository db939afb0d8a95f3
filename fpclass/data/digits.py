"""scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes): a small real dataset that ships
with scikit-learn, so it needs no download."""
import numpy as np

from fpclass.data.source import Source, Split


def load_digits_source(data) -> Source:
  """The digits, whatever the data section says (they are one fixed set)."""
  from sklearn.datasets import load_digits
  digits = load_digits()
  # Pixel values are 0..16 ink counts; scale to the 0..255 range every other source uses.
  images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
  ids = [f'digit_{i:04d}' for i in range(len(images))]
  train = Split(ids=ids, labels=digits.target.astype(np.int32), images=images)
  return Source(name='digits', class_names=tuple(str(i) for i in range(10)), train=train)
