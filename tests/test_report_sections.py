"""report.md from report.d's sections: in name order, and without the hidden temporary files of a write in flight
(another process of a multi-process run writes its section beside this one's) or of a killed write."""
from fpclass.runtime import report


def test_the_report_joins_the_sections_in_order_and_never_a_temporary_file(tmp_path):
  report.write_section(tmp_path, '20-evaluate', 'B')
  sections = tmp_path / report.SECTIONS
  # what fileio.write_text leaves while it writes (and a killed write leaves for good): `.<name>.tmp-*<suffix>`
  (sections / '.10-train.md.tmp-x1y2z3.md').write_text('a stale copy\n')
  report.write_section(tmp_path, '10-train', 'A')
  text = (tmp_path / 'report.md').read_text()
  assert text == f'# fpclass run: {tmp_path.name}\n\nA\n\nB\n'
  assert 'stale' not in report.build_report(tmp_path).read_text()
