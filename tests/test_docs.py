"""README.md and docs/*.md: every relative link points at a file and heading that exist."""

import pathlib
import re

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
_FENCE = re.compile(r'^```.*?^```', re.M | re.S)


def _anchor(heading: str) -> str:
  """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to '-'."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


def _anchors(path: pathlib.Path) -> set[str]:
  text = _FENCE.sub('', path.read_text(encoding='utf-8'))
  return {_anchor(line.lstrip('#')) for line in text.splitlines() if line.startswith('#')}


def _documents() -> list[pathlib.Path]:
  return [REPO_ROOT / 'README.md'] + sorted((REPO_ROOT / 'docs').glob('*.md'))


def test_relative_links_and_anchors_resolve():
  broken = []
  for document in _documents():
    text = _FENCE.sub('', document.read_text(encoding='utf-8'))
    for target in _LINK.findall(text):
      if re.match(r'[a-z]+:', target):  # http(s):, mailto:
        continue
      path_part, _, anchor = target.partition('#')
      linked = (document.parent / path_part).resolve() if path_part else document
      if not linked.exists():
        broken.append(f'{document.name}: {target} (no such file)')
      elif anchor and linked.suffix == '.md' and anchor not in _anchors(linked):
        broken.append(f'{document.name}: {target} (no such heading)')
  assert not broken, broken


def test_readme_is_short_and_names_no_internal_files():
  text = (REPO_ROOT / 'README.md').read_text(encoding='utf-8')
  assert len(text.encode('utf-8')) <= 12_500, 'README.md: keep it short; details go to docs/'
  for document in _documents():
    content = document.read_text(encoding='utf-8')
    assert 'DESIGN.md' not in content, document
    assert not re.search(r'\bissue \d+', content, re.I), document
