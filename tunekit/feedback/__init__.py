"""AI feedback data: preference pairs and SFT rows written by models rather than people.

- :mod:`tunekit.feedback.chunks`: the resumable, chunked loop both commands share. Prompts are processed a chunk at
  a time; after each chunk its rows are appended and a small progress file is replaced atomically, so a killed run
  continues after its last completed chunk and ends with the file an uninterrupted run writes.
- :mod:`tunekit.feedback.ranking`: turning k judged samples of one prompt into a (chosen, rejected) pair (RLAIF,
  ``python -m tunekit.recipes.label``).
- :mod:`tunekit.feedback.constitution`: principles and the critique and revision requests
  (``python -m tunekit.recipes.constitution``).
"""
