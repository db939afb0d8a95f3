"""`--mode label_issues`: the given labels that a workdir's out-of-fold predictions say are probably wrong.

Pools every model's out-of-fold probabilities below --workdir (a train run with folds, a sweep, an auto run:
`fpclass.infer.out_of_fold`), runs cleanlab's confident learning on them (`fpclass.explain.label_issues`,
config.label_issues) and writes:
- label_issues.csv: the flagged examples (file, given_label, suggested_label, self_confidence, rank, members),
  least confident first;
- label_quality.csv: every example with out-of-fold predictions, with cleanlab's verdict (`issue`);
- label_issues.png: the config.label_issues.grid least confident flagged images, decoded by the data pipeline;
- label_issues_cam.png, on request (config.label_issues.cam): Grad-CAM of the least confident, their given and
  suggested labels, each by a model that held it out (`fpclass.explain.suspect_cams`);
- label_issues.md and a report.md section.
It reads only: no file of the data changes. Act on the list with --config.data.exclude_csv or
--config.data.relabel_csv (`fpclass.data.curation`; docs/label_issues.md).
"""
import pathlib

import pandas as pd

from fpclass import fileio
from fpclass.analysis.metric_registry import MULTI
from fpclass.config.inputs import DataSettings
from fpclass.config.outputs import ExplainSettings, LabelIssuesSettings
from fpclass.data import pipeline
from fpclass.data.rows import in_memory
from fpclass.explain import suspect_cams
from fpclass.explain.label_issues import chance_warning, find_label_issues, flagged, report_markdown, suspects_grid
from fpclass.infer import out_of_fold
from fpclass.runtime import report

FILE = 'label_issues.csv'
QUALITY_FILE = 'label_quality.csv'
GRID_FILE = 'label_issues.png'
CAM_FILE = 'label_issues_cam.png'
REPORT_FILE = 'label_issues.md'


def label_issues(config, workdir) -> pd.DataFrame:
  """Writes the files above; returns the flagged examples (label_issues.csv's rows)."""
  workdir = pathlib.Path(workdir)
  settings = LabelIssuesSettings.from_config(config.label_issues)
  pooled = out_of_fold.pool(workdir)
  everything = find_label_issues(pooled.ids, pooled.labels, pooled.probabilities, pooled.class_names, pooled.task,
                                 settings.filter_by, pooled.members)
  issues = flagged(everything)
  warning = chance_warning(pooled.labels, pooled.probabilities, pooled.task)
  fileio.write_csv(workdir / QUALITY_FILE, everything)
  fileio.write_csv(workdir / FILE, issues)
  figures = {}
  if max(settings.grid, settings.cam) and len(issues):
    images = _images(config, list(issues.head(max(settings.grid, settings.cam))['file']))
    grid = issues.head(settings.grid)[lambda rows: rows['file'].isin(list(images))]
    if len(grid):
      fileio.save_figure(workdir / GRID_FILE, suspects_grid([images[f] for f in grid['file']], grid), trim=False)
      figures['grid'] = GRID_FILE
    explained = issues.head(settings.cam)[lambda rows: rows['file'].isin(list(images))]
    if len(explained):
      chosen = suspect_cams.suspects([images[f] for f in explained['file']], explained, pooled.class_names,
                                     pooled.task)
      fileio.save_figure(workdir / CAM_FILE, suspect_cams.cam_figure(
          pooled.files, chosen, pooled.class_names, pooled.task, ExplainSettings.from_config(config.explain)),
          trim=False)
      figures['cam'] = CAM_FILE
  sources = [str(pathlib.Path(f).relative_to(workdir)) for f in pooled.files]
  markdown = report_markdown(issues, everything, sources, figures.get('grid'), figures.get('cam'), warning=warning)
  fileio.write_text(workdir / REPORT_FILE, markdown + '\n')
  report.write_section(workdir, '60-label-issues', markdown)
  kind = 'multi-label ' if pooled.task == MULTI else ''
  advice = (f'; warning: {warning}' if warning else
            f'; train without them with --config.data.exclude_csv={(workdir / FILE).absolute()}' if len(issues) else '')
  print(f'{workdir / FILE}: {len(issues)} of {len(everything)} {kind}labels flagged '
        f'({len(pooled.files)} prediction file(s))' + advice)
  return issues


def _images(config, ids: list) -> dict:
  """{id: its decoded image (as training saw it)} for the `ids` the data still holds."""
  decoded = pipeline.decode_source(DataSettings.from_config(config.data), progress=False, mapped=True)
  where = {}
  for split in (decoded.pool, decoded.val):
    if split is not None:
      for i, example_id in enumerate(split.ids):
        where.setdefault(str(example_id), (split, i))
  return {i: in_memory(where[i][0].take([where[i][1]]).images)[0] for i in ids if i in where}
