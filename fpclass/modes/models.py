"""`--mode models`: the registered models, filtered by config.models.pattern and family, printed as a table
(name, family, parameters, default input size, where parity was verified). It writes nothing.

    python launch.py --mode models --config.models.pattern='convnext*'   # needs no --config or --workdir

A timm checkpoint loads by name with --config.model.pretrained=hf-hub:timm/<arch>.<tag> (model.name follows).
"""
from fpclass.config.outputs import ModelsSettings
from fpclass.models import listing


def list_models(config, workdir, **_) -> list:
  settings = ModelsSettings.from_config(config.models)
  rows = listing.rows(settings.pattern, settings.family, settings.parameters)
  print(f'{len(rows)} registered model(s) matching {settings.pattern!r}'
        + (f' in family {settings.family!r}' if settings.family else '') + ':')
  header = ('name', 'family', 'parameters', 'input', 'parity verified')
  table = [(r.name, r.family, f'{r.parameters / 1e6:.1f}M' if r.parameters >= 0 else '-',
            'x'.join(map(str, r.input_size)) if r.input_size else '-', r.verified) for r in rows]
  widths = [max(len(str(row[i])) for row in (header, *table)) for i in range(len(header))]
  for row in (header, *table):
    print('  '.join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())
  return rows
