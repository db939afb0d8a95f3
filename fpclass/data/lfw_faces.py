"""scikit-image's `lfw_subset` (200 grayscale 25x25 crops from Labeled Faces in the Wild: 100 faces, then 100
patches of the same photos' backgrounds): a small real two-class set that ships in scikit-image's wheel, so it
needs no download. Optional: `pip install 'fpclass[samples]'`."""
import numpy as np

from fpclass.data.source import Source, Split
from fpclass.errors import UserInputError

CLASS_NAMES = ('face', 'not_face')
FACES = 100   # lfw_subset's first 100 rows are faces, the other 100 are not


def load_lfw_faces_source(data) -> Source:
  """The 200 crops, whatever the data section says (they are one fixed set). Ids name the class and the row of
  `skimage.data.lfw_subset()`: face_000 ... face_099, not_face_100 ... not_face_199."""
  try:
    from skimage.data import lfw_subset
  except ImportError:
    raise UserInputError("config.data.source='lfw_faces' reads scikit-image's bundled faces: "
                         "pip install 'fpclass[samples]'") from None
  # float64 in [0, 1]; round to the 0..255 range every other source uses.
  images = np.round(np.asarray(lfw_subset(), np.float64) * 255.0).astype(np.uint8)[..., None]
  labels = (np.arange(len(images)) >= FACES).astype(np.int32)
  ids = [f'{CLASS_NAMES[label]}_{i:03d}' for i, label in enumerate(labels)]
  return Source(name='lfw_faces', class_names=CLASS_NAMES, train=Split(ids=ids, labels=labels, images=images))
