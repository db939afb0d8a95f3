"""The workdir's report.md, assembled from sections that each mode writes.

A mode writes `<workdir>/report.d/<NN>-<name>.md` with `write_section`; `build_report` joins them in
name order under one title. So train, evaluate, explain and submit each own their part, and re-running
one of them refreshes only its part.
"""
import pathlib

from fpclass import fileio
from fpclass.runtime import timings

SECTIONS = 'report.d'


def write_section(workdir, name: str, markdown: str) -> None:
  with timings.phase('report'):
    fileio.write_text(pathlib.Path(workdir) / SECTIONS / f'{name}.md', markdown.strip() + '\n')
    build_report(workdir)


def build_report(workdir) -> pathlib.Path:
  workdir = pathlib.Path(workdir)
  parts = [f'# fpclass run: {workdir.name}\n']
  section_dir = workdir / SECTIONS
  if section_dir.is_dir():
    parts += [p.read_text() for p in fileio.finished(sorted(section_dir.glob('*.md')))]
  path = workdir / 'report.md'
  fileio.write_text(path, '\n'.join(parts))
  return path


def table(rows, columns) -> str:
  """A markdown table from a list of dicts."""
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(_cell(row.get(c, '')) for c in columns) + ' |')
  return '\n'.join(lines)


def _cell(value) -> str:
  if isinstance(value, float):
    return f'{value:.4f}'
  return str(value).replace('|', '\\|')
