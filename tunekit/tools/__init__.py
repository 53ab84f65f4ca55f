"""Tools a model can call: Python functions with JSON schemas, run in a sandbox, called in the chat template's format.

- :mod:`tunekit.tools.registry`: naming tools in a config (a built-in name, ``file.py:function`` or
  ``pkg.module:function``), their JSON schemas, and the ``tools`` config section;
- :mod:`tunekit.tools.builtin`: the built-ins, ``calculator`` (arithmetic read with ``ast``, never ``eval``) and
  ``python`` (code run in the sandbox);
- :mod:`tunekit.tools.sandbox`: one call in a subprocess with wall-clock, memory and file-size limits, no network
  where Linux lets an unprivileged user take it away, a scratch directory, and output cut to a configured size;
  every failure comes back as an error message for the model;
- :mod:`tunekit.tools.calls`: finding tool calls in generated text and checking their arguments.

See docs/tools.md for the security model of the sandbox, stated plainly.
"""
