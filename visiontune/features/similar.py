"""Similar-image search: cosine similarity between pooled backbone features."""

from __future__ import annotations

import torch

__all__ = ["top_k_similar"]


def top_k_similar(
    query: torch.Tensor, gallery: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scores, indices)`` of the ``k`` gallery rows most similar to each query row.

    ``query``: (Q, D) or (D,); ``gallery``: (N, D). Scores are cosine similarities in [-1, 1].

    >>> gallery = torch.tensor([[0.0, 1.0], [2.0, 0.1], [1.0, 1.0]])
    >>> scores, indices = top_k_similar(torch.tensor([1.0, 0.0]), gallery, k=2)
    >>> indices.tolist(), [round(s, 3) for s in scores[0].tolist()]
    ([[1, 2]], [0.999, 0.707])
    """
    if query.ndim == 1:
        query = query.unsqueeze(0)
    q = torch.nn.functional.normalize(query.float(), dim=1)
    g = torch.nn.functional.normalize(gallery.float(), dim=1)
    scores = q @ g.T
    k = min(k, g.shape[0])
    return scores.topk(k, dim=1)
