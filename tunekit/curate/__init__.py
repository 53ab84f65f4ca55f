"""Data curation: duplicates, near-duplicates, filters, PII scrubbing, decontamination and quality scoring, run by
``python -m tunekit.recipes.curate`` (see :mod:`tunekit.curate.pipeline`)."""
