"""Pure per-patch score functions (``specs/methods.md`` section 1, steps 1-2).

Every function maps batched tensors to ``[B, M]`` scores over the M patches (the ``prefix`` protected tokens,
CLIP's CLS, already excluded by the caller, or by ``prefix`` where a function gets all N tokens) and computes in float32 whatever the input dtype, so float16/bfloat16 inputs give the same ranking
as float32 up to input rounding.
"""

from __future__ import annotations

import math

import torch

# Guards the z-score and the cosine normalisation against zero variance / zero vectors.
ZSCORE_EPS = 1e-6
COSINE_EPS = 1e-8


def _f32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 (itself if it already is: a no-op ``.float()`` is still an op to dispatch)."""
    return x if x.dtype == torch.float32 else x.float()


def _check_ndim(name: str, x: torch.Tensor, ndim: int, shape: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}")


def zscore(values: torch.Tensor, eps: float = ZSCORE_EPS) -> torch.Tensor:
    """Per-row z-score ``(v - mean) / (std + eps)`` with the population std.

    values: ``[B, M]`` -> ``[B, M]`` float32. A constant row gives zeros (not NaN).
    """
    _check_ndim("values", values, 2, "[B, M]")
    v = _f32(values)
    mean = v.mean(dim=1, keepdim=True)
    std = v.std(dim=1, keepdim=True, correction=0)
    return (v - mean) / (std + eps)


def cls_attention(cls_attn: torch.Tensor, *, prefix: int) -> torch.Tensor:
    """Mean over heads of the CLS query's attention row, patches only.

    cls_attn: ``[B, H, N]`` over all N tokens, the first ``prefix`` of them protected (CLS; ``prefix = 1`` for
    CLIP, 0 for towers without CLS) -> ``[B, N - prefix]`` float32.
    """
    _check_ndim("cls_attn", cls_attn, 3, "[B, H, N]")
    if isinstance(prefix, bool) or not isinstance(prefix, int) or not 0 <= prefix < cls_attn.shape[2]:
        raise ValueError(f"prefix must be an int in [0, N={cls_attn.shape[2]}), got prefix={prefix!r}")
    return _f32(cls_attn[:, :, prefix:]).mean(dim=1)


def channel_entropy(keys: torch.Tensor, tau: float) -> torch.Tensor:
    """Normalised entropy of each patch's channel distribution ``p = softmax(k_i / tau)``.

    keys: ``[B, M, Dk]`` head-averaged patch keys -> ``[B, M]`` float32 in [0, 1] (``H / ln Dk``; 0 when
    ``Dk == 1``, where the entropy is always 0).
    """
    _check_ndim("keys", keys, 3, "[B, M, Dk]")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    log_p = torch.log_softmax(_f32(keys) / tau, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(dim=-1)
    dk = keys.shape[-1]
    return entropy / math.log(dk) if dk > 1 else torch.zeros_like(entropy)


def mutual_information_proxy(keys: torch.Tensor, tau: float) -> torch.Tensor:
    """``I_i = 1 - H(q_i) / ln(M - 1)`` with ``q_i = softmax(S_i / tau)`` over the *other* patches.

    ``S = k̂ k̂^T`` is the cosine-similarity matrix of the L2-normalised keys, diagonal masked out. A patch
    similar to a few others gets a peaked ``q_i`` and a high score.

    keys: ``[B, M, Dk]`` -> ``[B, M]`` float32 in [0, 1]. With ``M <= 2`` the distribution has at most one
    outcome, so every patch gets 1 (zero entropy).
    """
    _check_ndim("keys", keys, 3, "[B, M, Dk]")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if keys.shape[1] <= 2:
        return torch.ones(keys.shape[:2], device=keys.device)
    k_hat = l2_normalize(keys)
    return mutual_information_from_gram(torch.bmm(k_hat, k_hat.transpose(1, 2)), tau)


def mutual_information_from_gram(gram: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`mutual_information_proxy` from the unit keys' cosines ``S = k̂ k̂^T`` ``[B, M, M]`` float32
    (M > 2), which it overwrites: callers that share ``S`` (SparseZip's k-means) hand it over last. -> ``[B, M]``.

    One exponential pass and no masks: with ``e_ij = exp((S_ij - peak_i) / tau)`` over the other patches
    (``peak_i`` their largest cosine; the diagonal gives ``e_ii = 0``), ``Z_i = sum_j e_ij``, ``q = e / Z`` and
    ``H_i = -sum_j q_ij log q_ij = ln Z_i - (sum_j e_ij S_ij / Z_i - peak_i) / tau``.
    """
    m = gram.shape[-1]
    diagonal = gram.diagonal(dim1=1, dim2=2)
    diagonal.fill_(float("-inf"))  # q_i is over the other patches
    peak = gram.amax(dim=-1, keepdim=True)
    weights = torch.sub(gram, peak).div_(tau).exp_()  # 0 on the diagonal
    diagonal.fill_(0.0)  # so that e_ii S_ii is 0 there, not 0 * -inf = NaN
    total = weights.sum(dim=-1)
    entropy = total.log() - (weights.mul_(gram).sum(dim=-1) / total - peak[..., 0]) / tau
    return 1.0 - entropy / math.log(m - 1)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Float32 unit vectors along the last dim; an all-zero vector stays zero (norm clamped, no NaN).

    x: ``[..., D]`` -> ``[..., D]`` float32.
    """
    x = _f32(x)
    return x / x.norm(dim=-1, keepdim=True).clamp_min(COSINE_EPS)


def text_relevance(patches: torch.Tensor, text_query: torch.Tensor) -> torch.Tensor:
    """Cosine similarity ``r_i = cos(X_i, v)`` of every patch's hidden state with the text vector.

    patches: ``[B, M, C]`` patch hidden states; text_query: ``[B, C]`` the question in vision space
    (see :func:`text_to_vision_space`) -> ``[B, M]`` float32 in [-1, 1].
    """
    _check_ndim("patches", patches, 3, "[B, M, C]")
    if tuple(text_query.shape) != (patches.shape[0], patches.shape[2]):
        raise ValueError(
            f"text_query must be [B={patches.shape[0]}, C={patches.shape[2]}], got {tuple(text_query.shape)}"
        )
    # cos = (x . v) / (|x| |v|) with both norms clamped like l2_normalize, without normalising every patch.
    x = _f32(patches)
    dots = torch.bmm(x, l2_normalize(text_query)[:, :, None])[:, :, 0]
    return dots / torch.linalg.vector_norm(x, dim=-1).clamp_min(COSINE_EPS)


def text_to_vision_space(text: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Map a text vector from LLM embedding space into vision hidden space: ``v = W1^T (W2^T t)``.

    The projector is ``Linear1 (C -> D) -> GELU -> Linear2 (D -> D)``; this applies the transposes of its two
    weight matrices, ignoring biases and the activation (no learned parameters of our own).

    text: ``[B, D]`` e.g. the mean LLM input embedding of the question tokens; w1: ``[D, C]``
    (``Linear1.weight``, stored ``[out, in]``); w2: ``[D, D]`` (``Linear2.weight``) -> ``[B, C]`` float32.
    """
    _check_ndim("text", text, 2, "[B, D]")
    d = text.shape[1]
    if w1.ndim != 2 or w1.shape[0] != d:
        raise ValueError(f"w1 must be [D={d}, C] (Linear1.weight), got {tuple(w1.shape)}")
    if tuple(w2.shape) != (d, d):
        raise ValueError(f"w2 must be [D={d}, D={d}] (Linear2.weight), got {tuple(w2.shape)}")
    # Row-vector form of W1^T (W2^T t): t^T W2 W1.
    return text.float() @ w2.float() @ w1.float()


def hybrid_score(
    attn: torch.Tensor,
    keys: torch.Tensor,
    *,
    alpha_attn: float,
    alpha_entropy: float,
    alpha_mutual: float,
    tau_feat: float,
    tau_sim: float,
    gram: torch.Tensor | None = None,
) -> torch.Tensor:
    """``s = a_attn z(attn) + a_ent z(H) + a_mut z(I)`` over patches.

    attn: ``[B, M]`` per-patch CLS attention (:func:`cls_attention`); keys: ``[B, M, Dk]`` patch keys;
    gram: ``k̂ k̂^T`` ``[B, M, M]`` of the L2-normalised keys if the caller has it (it is overwritten) ->
    ``[B, M]`` float32. Terms with weight 0 are not computed at all (the MI proxy is the one ``O(M^2)`` term).
    """
    _check_ndim("attn", attn, 2, "[B, M]")
    _check_ndim("keys", keys, 3, "[B, M, Dk]")
    if attn.shape != keys.shape[:2]:
        raise ValueError(f"attn {tuple(attn.shape)} and keys {tuple(keys.shape)} disagree on [B, M]")
    terms = []
    if alpha_attn:
        terms.append(alpha_attn * zscore(attn))
    if alpha_entropy:
        terms.append(alpha_entropy * zscore(channel_entropy(keys, tau_feat)))
    if alpha_mutual:
        if gram is None or keys.shape[1] <= 2:
            mutual = mutual_information_proxy(keys, tau_sim)
        else:
            if tau_sim <= 0:
                raise ValueError(f"tau must be > 0, got {tau_sim}")
            mutual = mutual_information_from_gram(gram, tau_sim)
        terms.append(alpha_mutual * zscore(mutual))
    if not terms:
        return torch.zeros(attn.shape, device=attn.device)
    score = terms[0]
    for term in terms[1:]:  # t1 + t2 + t3, left to right
        score = score + term
    return score


def cosine_similarity_matrix(x: torch.Tensor) -> torch.Tensor:
    """Pairwise cosine similarities of each image's tokens (zero vectors give 0, not NaN).

    x: ``[B, M, D]`` -> ``[B, M, M]`` float32, ``S[b, i, j] = cos(x[b, i], x[b, j])``.
    """
    _check_ndim("x", x, 3, "[B, M, D]")
    unit = l2_normalize(x)
    return torch.bmm(unit, unit.transpose(1, 2))


def iqr_outliers(values: torch.Tensor, whisker: float = 1.5) -> torch.Tensor:
    """Upper outliers by the interquartile-range rule: ``v > Q3 + whisker * (Q3 - Q1)``, per row.

    Quartiles use linear interpolation between order statistics (numpy's default ``np.percentile``), computed
    in float32. values: ``[B, M]`` -> ``[B, M]`` bool. A constant row has no outliers.
    """
    _check_ndim("values", values, 2, "[B, M]")
    if whisker < 0:
        raise ValueError(f"whisker must be >= 0, got {whisker}")
    v = values.float()
    # The quantile levels made on the device (0.25, 0.75 exactly): a tensor from host data would be a copy.
    levels = torch.arange(2, dtype=torch.float32, device=v.device).mul_(0.5).add_(0.25)
    q1, q3 = torch.quantile(v, levels, dim=1, keepdim=True)
    return v > q3 + whisker * (q3 - q1)
