"""Markdown tables of all flags: the generator of docs/flags.md.

Usage: `python -m flags.table` prints the official-flag table and ours;
`python -m flags.table --update docs/flags.md` rewrites the section of docs/flags.md
between the `<!-- flag-table:start -->` and `<!-- flag-table:end -->` markers with it
(tests/test_flags.py checks that docs/flags.md equals this output). Run it after adding
or changing a flag.
"""

import pathlib
import sys

from absl import flags as absl_flags

import flags as flags_lib


def _format_default(value: object) -> str:
  if isinstance(value, float):
    text = repr(value).replace('e-0', 'e-')
  elif isinstance(value, str):
    text = repr(value)
  else:
    text = str(value)
  return f'`{text}`'


def _meaning(flag: absl_flags.Flag) -> str:
  meaning = flag.help
  enum_values = getattr(flag.parser, 'enum_values', None)
  if enum_values:
    # absl prefixes enum help with '<a|b>: ' for --help; list the values instead.
    meaning = meaning.removeprefix('<' + '|'.join(enum_values) + '>: ')
    meaning += ' One of ' + ', '.join(f'`{value}`' for value in enum_values) + '.'
  # Markdown: a '|' would split the cell, a '<' could start an HTML tag.
  return meaning.replace('|', '\\|').replace('<', '\\<')


def markdown_table(names: tuple[str, ...]) -> str:
  """| flag | default | meaning | rows for `names`, from their definitions."""
  flag_values = absl_flags.FlagValues()
  flags_lib.define_flags(flag_values)
  lines = ['| flag | default | meaning |', '|---|---|---|']
  for name in names:
    flag = flag_values[name]
    lines.append(f'| `--{name}` | {_format_default(flag.default)} | {_meaning(flag)} |')
  return '\n'.join(lines) + '\n'


def official_table() -> str:
  """Table of the 48 flags of google-research/simclr tf2/run.py."""
  return markdown_table(flags_lib.official_flag_names())


def our_table() -> str:
  """Table of the flags this project adds."""
  return markdown_table(flags_lib.our_flag_names())


def markdown() -> str:
  """The docs/flags.md section: both tables with their headings."""
  return (
      '## Flags of google-research/simclr tf2/run.py\n\n'
      'Same names, defaults and meanings as the official code, except '
      '`--use_tpu` (False here).\n\n' + official_table() +
      '\n## Flags of ours\n\n' + our_table())


START_MARKER = '<!-- flag-table:start -->'
END_MARKER = '<!-- flag-table:end -->'


DOCS_PATH = 'docs/flags.md'


def update_markdown_file(path: str) -> None:
  """Replaces the text between the flag-table markers of `path` with `markdown()`."""
  document = pathlib.Path(path)
  text = document.read_text(encoding='utf-8')
  start, end = text.find(START_MARKER), text.find(END_MARKER)
  if start < 0 or end < start:
    raise SystemExit(f'error: {path} lacks the markers {START_MARKER} ... {END_MARKER}.')
  head = text[:start + len(START_MARKER)]
  document.write_text(head + '\n' + markdown() + text[end:], encoding='utf-8')


if __name__ == '__main__':
  if len(sys.argv) in (2, 3) and sys.argv[1] == '--update':
    update_markdown_file(sys.argv[2] if len(sys.argv) == 3 else DOCS_PATH)
  elif len(sys.argv) == 1:
    print(markdown(), end='')
  else:
    raise SystemExit(f'usage: python -m flags.table [--update {DOCS_PATH}]')
