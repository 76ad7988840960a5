"""pyproject.toml: its console commands resolve, it packages every module, and its
dependencies are those of requirements.txt (the one-line install the README uses)."""

import fnmatch
import importlib
import pathlib
import re
import tomllib

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
  with open(REPO_ROOT / 'pyproject.toml', 'rb') as file:
    return tomllib.load(file)


def test_console_commands_resolve_to_functions():
  scripts = _pyproject()['project']['scripts']
  assert {'tf-simclr', 'tf-simclr-export'} <= set(scripts)
  for command, target in scripts.items():
    module_name, function_name = target.split(':')
    function = getattr(importlib.import_module(module_name), function_name)
    assert callable(function), command


def test_every_package_and_top_level_module_is_installed():
  setuptools_config = _pyproject()['tool']['setuptools']
  patterns = setuptools_config['packages']['find']['include']
  packages = {str(path.parent.relative_to(REPO_ROOT)).replace('/', '.')
              for top in ('tf_simclr', 'flags', 'hub_export')
              for path in (REPO_ROOT / top).glob('**/__init__.py')}
  assert {'tf_simclr', 'tf_simclr.models', 'tf_simclr.data', 'flags', 'hub_export'} <= packages
  for package in packages:
    assert any(fnmatch.fnmatch(package, pattern) for pattern in patterns), package
  assert not any(fnmatch.fnmatch(name, pattern) for name in ('tests', 'bench', 'scripts')
                 for pattern in patterns)
  assert setuptools_config['py-modules'] == ['run']
  # Non-Python files the library reads at run time ship with it.
  package_data = setuptools_config['package-data']
  for source in (REPO_ROOT / 'tf_simclr').glob('**/*.cc'):
    package = str(source.parent.relative_to(REPO_ROOT)).replace('/', '.')
    assert any(fnmatch.fnmatch(source.name, pattern)
               for pattern in package_data.get(package, [])), source


def _requirement_names(lines: list[str]) -> dict[str, str]:
  """{normalised name: specifier} of requirement lines."""
  requirements = {}
  for line in lines:
    line = line.split('#')[0].strip()
    if line:
      name = re.match(r'[A-Za-z0-9_.\-]+', line).group(0)
      requirements[re.sub(r'[-_.]+', '-', name).lower()] = line[len(name):].strip()
  return requirements


def test_dependencies_match_requirements_txt():
  project = _pyproject()['project']
  declared = _requirement_names(project['dependencies'])
  for extra in project['optional-dependencies'].values():
    declared.update(_requirement_names(extra))
  required = _requirement_names(
      (REPO_ROOT / 'requirements.txt').read_text(encoding='utf-8').splitlines())
  assert declared == required
