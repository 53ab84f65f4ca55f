"""Duplicates (same normalised text) and near-duplicates (MinHash LSH, from datasketch) among rows seen so far.

Rows are offered in file order; the first of a group is kept and each later one is reported with the row it
repeats. Memory grows with the rows kept, not with their text: 16 bytes per row for exact duplicates, and
``num_perm`` 32-bit hash values per row plus datasketch's LSH index (its band buckets) for near-duplicates: about
5 KB a kept row at num_perm=128, measured on GSM8K-like rows (docs/results.md). A file larger than memory can be checked
as long as these fit; with more rows than that, turn near_duplicates off (exact duplicates cost ~0.2 KB a row).
"""

from __future__ import annotations

from typing import Any

from tunekit.curate.checks import digest, ngrams
from tunekit.errors import ConfigError


class ExactDuplicates:
    """Fingerprints of the normalised texts kept so far."""

    def __init__(self) -> None:
        self.first: dict[bytes, str] = {}  # fingerprint -> where its first row is

    def seen(self, normalised: str, where: str) -> str | None:
        """Where an earlier row with the same normalised text is, or None (and this row is remembered)."""
        key = digest(normalised)
        earlier = self.first.get(key)
        if earlier is None:
            self.first[key] = where
        return earlier


class NearDuplicates:
    """MinHash signatures over word shingles, indexed by datasketch's MinHashLSH for Jaccard >= ``threshold``.

    A candidate the index returns is confirmed by the signatures' estimated Jaccard similarity, so that a report
    only lists pairs that really are that close. Deterministic: the permutations come from a fixed seed.
    """

    def __init__(self, threshold: float, num_perm: int, shingle: int) -> None:
        try:
            from datasketch import LeanMinHash, MinHash, MinHashLSH
        except ImportError:
            raise ConfigError(
                'near-duplicate detection needs datasketch: pip install "tunekit[curate]" (or set '
                "near_duplicates.enabled=false)"
            ) from None
        self._minhash = MinHash
        self._lean = LeanMinHash
        # The permutations are the same for every row (fixed seed): made once, not per row.
        template = MinHash(num_perm=num_perm, seed=1)
        self._permutations, self._scheme = template.permutations, template.scheme
        try:
            self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        except ValueError as err:  # no band layout of num_perm reaches the threshold
            raise ConfigError(
                f"near_duplicates.threshold={threshold} with num_perm={num_perm}: {err}; raise num_perm or lower the "
                "threshold"
            ) from None
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle = shingle
        self.signatures: dict[str, Any] = {}  # where -> LeanMinHash (hash values only) of the rows kept

    def signature(self, words: list[str]) -> Any:
        """MinHash of the text's word shingles (the whole text as one shingle when it is shorter)."""
        shingles = ngrams(words, self.shingle) or [" ".join(words)]
        minhash = self._minhash(num_perm=self.num_perm, seed=1, permutations=self._permutations, scheme=self._scheme)
        minhash.update_batch([s.encode("utf-8") for s in sorted(set(shingles))])
        return minhash

    def seen(self, words: list[str], where: str) -> tuple[str, float] | None:
        """``(where, estimated Jaccard)`` of the closest earlier kept row at or above the threshold, or None (and
        this row is indexed)."""
        minhash = self.signature(words)
        best: tuple[str, float] | None = None
        for key in sorted(self.lsh.query(minhash)):
            similarity = float(minhash.jaccard(self.signatures[key]))
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (key, similarity)
        if best is None:
            lean = self._lean(minhash)
            self.lsh.insert(where, lean)
            self.signatures[where] = lean
        return best
