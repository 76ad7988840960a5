"""Per-shape kernel choices shared by our conv-gradient and fused-BN paths.

`kernel_choice` times our kernel against TensorFlow's for each layer shape and sets
the winner here; the layers read it when they are traced.
"""

import contextlib
from typing import Any, Hashable, Iterator, Mapping, Optional


class ShapeChoices:
  """shape key -> use ours (True) or TensorFlow's (False); unlisted keys take `default`.

  Also records the keys seen while `recording()` is active, so the caller can learn
  which shapes a model uses by tracing it once.
  """

  def __init__(self) -> None:
    self._choices: dict[Hashable, bool] = {}
    self._default = True
    self._recorded: Optional[list[Any]] = None

  def set(self, choices: Mapping[Hashable, bool], default: bool = True) -> None:
    """Replaces all choices and the default."""
    self._choices = dict(choices)
    self._default = bool(default)

  def get(self) -> tuple[dict[Hashable, bool], bool]:
    """(per-shape choices, default) currently set."""
    return dict(self._choices), self._default

  def ours(self, key: Hashable) -> bool:
    """Whether `key` takes our kernel."""
    return self._choices.get(key, self._default)

  def record(self, item: Any) -> None:
    """Appends `item` when recording, else does nothing."""
    if self._recorded is not None:
      self._recorded.append(item)

  @contextlib.contextmanager
  def recording(self) -> Iterator[list[Any]]:
    """Collects every `record(item)` made inside the block."""
    previous, self._recorded = self._recorded, []
    try:
      yield self._recorded
    finally:
      self._recorded = previous
