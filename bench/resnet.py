"""A registered torchvision-family model (ResNet-18, ResNet-50, ...) at 224x224x3 against torchvision's own.

    python bench/resnet.py --model resnet50 [--batch-size 64] [--precision bf16] [--steps 20] [--json out.json]
    python bench/resnet.py --model resnet18

Generic over a model name registered in fpclass.models whose torchvision twin has the same name
(torchvision.models.<name>(num_classes=...), random weights: nothing is downloaded). SGD with momentum 0.9,
1000 classes, no augmentation. On GPU the default precision is bf16 (PyTorch: autocast bf16,
channels_last and torch.compile variants). Exits with a message when the model is not registered yet.
"""
import harness  # noqa: F401  (sets up the path, the allocator and the compilation-cache policy first)

from fpclass import models
from fpclass.config.schema import base_config
from fpclass.errors import UserInputError


def main():
  args = harness.parse_args(
      __doc__.splitlines()[0], batch_size=64, steps=3, steps_gpu=30, rounds=3, bf16_on_gpu=True,
      eval_batch_size=64, add_arguments=lambda p: (
          p.add_argument('--model', default='resnet50', help='a name in fpclass.models.REGISTRY and torchvision.models'),
          p.add_argument('--num-classes', type=int, default=1000)))
  try:
    models.get_spec(args.model)
  except UserInputError:
    registered = sorted(models.REGISTRY)
    raise SystemExit(f'bench/resnet.py: model {args.model!r} is not registered in fpclass.models yet '
                     f'(registered: {registered}); the Flax ResNet ports come with the pretrained-backbones '
                     'issue. Nothing was measured.') from None
  import torchvision
  if not hasattr(torchvision.models, args.model):
    raise SystemExit(f'bench/resnet.py: torchvision.models has no {args.model!r} to compare with')
  config = base_config()
  config.data.image_size, config.data.channels = (224, 224), 3
  config.data.mean, config.data.std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
  config.model.name = args.model
  config.train.optimizer, config.train.learning_rate, config.train.momentum = 'sgd', 0.1, 0.9

  def make_torch():
    return getattr(torchvision.models, args.model)(weights=None, num_classes=args.num_classes)

  harness.check_same_size(config, (224, 224, 3), args.num_classes, make_torch)
  harness.run_benchmark(args, title=args.model, config=config, image_shape=(224, 224, 3),
                        num_classes=args.num_classes, make_torch_model=make_torch, torch_optimizer='sgd', lr=0.1)


if __name__ == '__main__':
  main()
