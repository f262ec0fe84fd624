"""Files written whole or not at all: through a temporary file beside the
target and a rename, so neither a reader nor a crash sees half a file, and
a write that fails leaves the old file as it was. No TensorFlow here: the
light commands (`pipeline.research.curves`) use it too."""

import json
import os


def write_atomic(path, text):
  """Writes `text` (a string, or bytes as they are) to `path` (see the
  module)."""
  tmp = f'{path}.tmp-{os.getpid()}'
  try:
    with open(tmp, 'wb' if isinstance(text, bytes) else 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_json(path, value, **kwargs):
  """Writes `value` as JSON (`json.dumps` keywords) to `path`: a value that
  cannot be serialised raises before `path` is touched."""
  write_atomic(path, json.dumps(value, **kwargs))
