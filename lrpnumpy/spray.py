"""Spectral relevance analysis (SpRAy): find the strategies behind thousands of heatmaps.

One heatmap says why a model decided as it did on one image; SpRAy (Lapuschkin et al., 2019)
looks at all the heatmaps of a class at once and groups them by the strategy they show.  A model
that learnt a shortcut (a "Clever Hans" predictor, such as a copyright tag in a corner that only
one class's images carry) shows it as a cluster of heatmaps with relevance on the shortcut.

The steps, each done by the library made for it:

1. :func:`preprocess`: sum over channels, optionally the absolute value, downsample by sum
   pooling, and divide each heatmap by its total (absolute) relevance.
2. :func:`knn_affinity`: the symmetric k-nearest-neighbour graph (scikit-learn): each heatmap is
   joined to its ``k`` nearest others (plain euclidean distance, itself excluded) with weight 1,
   and the graph is symmetrised as ``(A + A^T) / 2``.
3. :func:`laplacian`: the symmetric normalised Laplacian ``L = I - D^-1/2 W D^-1/2``.
4. :func:`spectral_embedding`: the smallest eigenvalues of ``L`` in ascending order, and their
   eigenvectors (scipy).  A graph of several connected components has one zero eigenvalue per
   component; each component is solved on its own (dense for small ones, ARPACK for large ones),
   so the repeated zero is exact and no shift-invert ever sits on it.
5. :func:`analyze`: the eigengap (the largest jump between consecutive eigenvalues) proposes the
   number of clusters; k-means (or agglomerative clustering) on the first ``n_clusters``
   eigenvectors, each row scaled to unit length (Ng, Jordan & Weiss, 2001); a 2-D t-SNE (or UMAP)
   of the spectral embedding for pictures.  :class:`SpRAyResult` holds it all and draws it.

Conventions are CoRelAy 1.0's (its ``SpectralEmbedding`` pipeline; the tests compare the
eigenvalues to 1e-8), with one deliberate difference: CoRelAy asks ARPACK for the largest-magnitude
eigenvalues ``mu`` of ``D^-1/2 W D^-1/2`` and reports ``1 - mu``, which picks values near 2 (``mu``
near -1) once more eigenvalues than clusters are asked for; here they are always the smallest.
And clustering uses the first ``n_clusters`` eigenvectors: k-means on all 32 eigenvectors does
not find a planted mark that the first two separate perfectly.

:func:`explain_class` computes one class's heatmaps through :mod:`lrpnumpy.parallel` (chunked,
serially or on Dask); :func:`compare` puts two or more models' relevance statistics for one class
side by side; :func:`add_mark` and :func:`mark_region` draw the Clever Hans model's mark
(``data/make_clever_hans.py``).

References
----------
Lapuschkin, Wäldchen, Binder, Montavon, Samek & Müller (2019). Unmasking Clever Hans predictors
and assessing what machines really learn. Nature Communications 10, 1096.
"""

import numbers

import numpy as np

from .errors import MissingDependencyError, NonFiniteError, ParameterError, RuleParameterError, ShapeError

#: The planted artefact of the Clever Hans model: a ``size`` x ``size`` square of ``value`` whose
#: top-left pixel is at (``row``, ``col``), like a copyright tag in a corner.
MARK = {"row": 1, "col": 1, "size": 3, "value": 1.0}

#: Components up to this size are solved densely (exact); larger ones with ARPACK.
DENSE_LIMIT = 1500


def mark_region(shape=(28, 28), mark=None):
    """Boolean (H, W) mask of the mark's pixels."""
    m = dict(MARK, **(mark or {}))
    region = np.zeros(shape, dtype=bool)
    region[m["row"]:m["row"] + m["size"], m["col"]:m["col"] + m["size"]] = True
    return region


def add_mark(images, mark=None):
    """A copy of ``images`` (N, C, H, W) with the mark drawn on every image and channel."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ShapeError(f"images must have shape (N, C, H, W), got {images.shape}")
    m = dict(MARK, **(mark or {}))
    out = images.copy()
    out[:, :, mark_region(images.shape[2:], m)] = m["value"]
    return out


def _sklearn(what):
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"SpRAy's {what} needs scikit-learn: pip install 'lrpnumpy[data]'") from exc


def _int(value, name, minimum=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ParameterError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------------
# 1. preprocessing


def _maps(relevance):
    """Relevance (N, C, H, W) or (N, H, W) as float64 (N, H, W), summed over channels, checked."""
    r = np.asarray(relevance)
    if r.dtype.kind not in "fiub":
        raise ShapeError(f"relevance must be an array of numbers, got dtype {r.dtype}")
    if r.ndim not in (3, 4):
        raise ShapeError(f"relevance must have shape (N, C, H, W) or (N, H, W), got {r.shape}")
    r = r.astype(np.float64)
    if not np.isfinite(r).all():
        bad = np.flatnonzero(~np.isfinite(r.reshape(len(r), -1)).all(axis=1))
        raise NonFiniteError(f"relevance holds NaN or infinity (heatmaps {bad[:5].tolist()}"
                             f"{' ...' if len(bad) > 5 else ''}); SpRAy needs finite heatmaps")
    return r.sum(axis=1) if r.ndim == 4 else r


def _sum_pool(r, pool):
    """Sum over ``pool`` x ``pool`` blocks; a partial block at the bottom/right edge is padded with zeros."""
    if pool == 1:
        return r
    n, h, w = r.shape
    hp, wp = -(-h // pool) * pool, -(-w // pool) * pool
    padded = np.zeros((n, hp, wp))
    padded[:, :h, :w] = r
    return padded.reshape(n, hp // pool, pool, wp // pool, pool).sum(axis=(2, 4))


def preprocess(relevance, absolute=False, pool=1, normalize=True):
    """Heatmaps as feature vectors for SpRAy.

    Parameters
    ----------
    relevance : ndarray of shape (N, C, H, W) or (N, H, W)
    absolute : bool
        Take ``|R|`` after summing over channels (positive and negative evidence alike).
    pool : int
        Sum pooling by ``pool`` x ``pool`` blocks (zeros pad a partial edge block).
    normalize : bool
        Divide each heatmap by its total absolute relevance, so heatmaps compare by where
        relevance is, not by how much there is.

    Returns
    -------
    ndarray of shape (N, H' * W'), float64

    Raises
    ------
    ShapeError, NonFiniteError
        Not a batch of heatmaps; NaN or infinity in it.
    ParameterError
        A heatmap with no relevance at all (nothing to normalise), or a bad ``pool``.
    """
    r = _maps(relevance)
    pool = _int(pool, "pool")
    if absolute:
        r = np.abs(r)
    r = _sum_pool(r, pool).reshape(len(r), -1)
    if normalize:
        total = np.abs(r).sum(axis=1)
        if (total == 0).any():
            bad = np.flatnonzero(total == 0)
            raise ParameterError(f"heatmaps {bad[:5].tolist()}{' ...' if len(bad) > 5 else ''} hold no relevance "
                                 f"(all zero); they cannot be normalised by their total relevance: drop them, or "
                                 f"pass normalize=False")
        r = r / total[:, None]
    return r


# ---------------------------------------------------------------------------------------------
# 2.-4. the graph, its Laplacian and its spectrum


def _features(features):
    x = np.asarray(features)
    if x.ndim != 2 or x.dtype.kind not in "fiub":
        raise ShapeError(f"features must be a 2-D array of numbers (N, D), got shape {x.shape}, dtype {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise NonFiniteError("features hold NaN or infinity; SpRAy needs finite heatmaps")
    return x


def knn_affinity(features, n_neighbors=10):
    """The symmetric k-nearest-neighbour graph of the rows of ``features`` (scipy CSR, float64).

    Each row is joined to its ``n_neighbors`` nearest other rows (euclidean distance, the row
    itself excluded) with weight 1; the result is ``(A + A^T) / 2`` (1 for mutual neighbours,
    1/2 for one-sided ones).

    Raises
    ------
    ParameterError
        ``n_neighbors`` is not below the number of rows (a point has only N - 1 others).
    """
    _sklearn("k-nearest-neighbour graph")
    import scipy.sparse
    from sklearn.neighbors import NearestNeighbors
    x = _features(features)
    k = _int(n_neighbors, "n_neighbors")
    n = len(x)
    if k >= n:
        raise ParameterError(f"n_neighbors={k} needs more heatmaps than that, got {n}: each heatmap has only {n - 1} "
                             f"others; pass n_neighbors < {n} or more heatmaps")
    # kneighbors() without a query leaves each point out of its own neighbours
    columns = NearestNeighbors(n_neighbors=k, algorithm="brute", metric="euclidean").fit(x).kneighbors(
        return_distance=False)
    rows = np.repeat(np.arange(n), k)
    a = scipy.sparse.csr_matrix((np.ones(n * k), (rows, columns.ravel())), shape=(n, n))
    return ((a + a.T) / 2.0).tocsr()


def laplacian(affinity):
    """The symmetric normalised Laplacian ``I - D^-1/2 W D^-1/2`` of an affinity matrix (CSR).

    Raises
    ------
    ShapeError, ParameterError
        Not a square symmetric matrix; a node without edges (degree 0) or a negative weight.
    """
    import scipy.sparse
    w = scipy.sparse.csr_matrix(affinity, dtype=np.float64)
    if w.shape[0] != w.shape[1]:
        raise ShapeError(f"affinity must be square, got shape {w.shape}")
    if abs(w - w.T).max() > 1e-12 * max(abs(w).max(), 1.0):
        raise ParameterError("affinity must be symmetric")
    if w.nnz and w.data.min() < 0:
        raise ParameterError("affinity must not hold negative weights")
    degree = np.asarray(w.sum(axis=1)).ravel()
    if (degree <= 0).any():
        raise ParameterError(f"nodes {np.flatnonzero(degree <= 0)[:5].tolist()} have no edges (degree 0)")
    d = scipy.sparse.diags(degree ** -0.5)
    return (scipy.sparse.identity(w.shape[0], format="csr") - d @ w @ d).tocsr()


def _component_spectrum(lap, degree, k, seed):
    """The ``k`` smallest eigenpairs of one connected component's Laplacian (ascending); ``degree``:
    its nodes' degrees."""
    n = lap.shape[0]
    k = min(k, n)
    if n <= DENSE_LIMIT or k >= n - 1:
        import scipy.linalg
        values, vectors = scipy.linalg.eigh(lap.toarray(), subset_by_index=[0, k - 1])
    else:
        import scipy.sparse
        from scipy.sparse.linalg import ArpackNoConvergence, eigsh
        # the largest eigenvalues of M = I - L (in [-1, 1]) are L's smallest: no factorisation, and the
        # zero of a connected component is simple, found as M's top eigenvalue 1
        m = (scipy.sparse.identity(n, format="csr") - lap).tocsr()
        v0 = np.random.default_rng(seed).standard_normal(n)
        try:
            mu, vectors = eigsh(m, k=k, which="LA", v0=v0, ncv=min(n, max(2 * k + 1, 40)), tol=1e-12)
        except ArpackNoConvergence:  # rare; the dense solve is slow (minutes at 6,000 nodes) but exact
            import scipy.linalg
            mu, vectors = scipy.linalg.eigh(m.toarray(), subset_by_index=[n - k, n - 1])
        values = 1.0 - mu
        order = np.argsort(values, kind="stable")
        values, vectors = values[order], vectors[:, order]
    # a connected component's smallest eigenvalue is exactly 0, with eigenvector D^1/2 1
    root_degree = np.sqrt(np.asarray(degree, dtype=np.float64))
    values[0] = 0.0
    vectors[:, 0] = root_degree / np.linalg.norm(root_degree)
    return np.clip(values, 0.0, 2.0), vectors


def spectral_embedding(features, n_neighbors=10, n_eigval=32, seed=0):
    """The smallest eigenvalues of the kNN graph's symmetric normalised Laplacian, and their eigenvectors.

    Parameters
    ----------
    features : ndarray of shape (N, D)
        E.g. :func:`preprocess`'s output.
    n_neighbors : int
    n_eigval : int
        How many eigenpairs (at most N).
    seed : int
        ARPACK's starting vector (large components only).

    Returns
    -------
    eigenvalues : ndarray of shape (n_eigval,)
        Ascending, in [0, 2]; as many zeros as the graph has connected components.
    eigenvectors : ndarray of shape (N, n_eigval)
        Orthonormal columns (a component's zero-eigenvalue vector is its ``D^1/2 1``, normalised,
        zero outside it).
    components : ndarray of shape (N,)
        The connected component of each row.
    """
    affinity = knn_affinity(features, n_neighbors)
    n = affinity.shape[0]
    k = _int(n_eigval, "n_eigval")
    if k > n:
        raise ParameterError(f"n_eigval={k} is more than the {n} heatmaps (a graph of N nodes has N eigenvalues)")
    return _spectrum(affinity, k, seed)


def row_normalize(vectors):
    """Each row scaled to unit length (rows of zeros stay zero)."""
    norm = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norm > 0, norm, 1.0)


def eigengap(eigenvalues, max_clusters=None):
    """The number of clusters the spectrum proposes: ``k`` where ``eigenvalues[k] - eigenvalues[k-1]``
    is largest (``1 <= k <= max_clusters``, default all but the last eigenvalue)."""
    ev = np.asarray(eigenvalues, dtype=np.float64)
    if ev.ndim != 1 or len(ev) < 2:
        raise ShapeError(f"eigengap needs at least two eigenvalues, got shape {ev.shape}")
    top = len(ev) - 1 if max_clusters is None else min(_int(max_clusters, "max_clusters"), len(ev) - 1)
    return int(np.argmax(np.diff(ev)[:top])) + 1


# ---------------------------------------------------------------------------------------------
# 5. clusters, embedding, result


def _cluster(vectors, n_clusters, clustering, seed):
    if n_clusters == 1:
        return np.zeros(len(vectors), dtype=np.int64)
    if clustering == "kmeans":
        from sklearn.cluster import KMeans
        return KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(vectors).astype(np.int64)
    from sklearn.cluster import AgglomerativeClustering
    return AgglomerativeClustering(n_clusters, linkage="ward").fit_predict(vectors).astype(np.int64)


def _embed(vectors, embedding, seed):
    if embedding is None:
        return None
    n = len(vectors)
    if n < 4:
        return np.zeros((n, 2))
    if embedding == "umap":
        try:
            import umap
        except ImportError as exc:
            raise MissingDependencyError("embedding='umap' needs umap-learn: pip install umap-learn") from exc
        return umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE
    return TSNE(2, perplexity=min(30.0, (n - 1) / 3.0), init="pca", random_state=seed).fit_transform(vectors)


class SpRAyResult:
    """What :func:`analyze` found.

    Attributes
    ----------
    eigenvalues : ndarray (n_eigval,)
        The Laplacian's smallest eigenvalues, ascending.
    eigenvectors : ndarray (N, n_eigval)
    components : ndarray (N,)
        Connected component of the kNN graph of each heatmap.
    proposed_clusters : int
        The eigengap's number of clusters.
    n_clusters : int
        The number used (given, or proposed).
    labels : ndarray (N,) of int
        Cluster of each heatmap, numbered by size (0 the largest).
    embedding : ndarray (N, 2) or None
        t-SNE (or UMAP) of the spectral embedding.
    means : ndarray (n_clusters, H, W)
        Mean preprocessed heatmap (before pooling) of each cluster.
    features : ndarray (N, D)
        The preprocessed heatmaps that were clustered.
    times : dict
        Seconds per stage.
    """

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def members(self, cluster):
        """Indices of the heatmaps in ``cluster``."""
        return np.flatnonzero(self.labels == cluster)

    @property
    def sizes(self):
        return np.bincount(self.labels, minlength=self.n_clusters)

    def __repr__(self):
        return (f"SpRAyResult({len(self.labels)} heatmaps, {self.n_clusters} clusters of sizes "
                f"{self.sizes.tolist()}, eigengap proposes {self.proposed_clusters}, "
                f"{len(np.unique(self.components))} graph component(s))")

    def to_dict(self):
        """Plain numbers for JSON."""
        return {"n": int(len(self.labels)), "eigenvalues": [float(v) for v in self.eigenvalues],
                "proposed_clusters": int(self.proposed_clusters), "n_clusters": int(self.n_clusters),
                "sizes": self.sizes.tolist(), "labels": self.labels.tolist(),
                "components": int(len(np.unique(self.components))),
                "times": {k: round(v, 4) for k, v in self.times.items()}}

    # pictures ---------------------------------------------------------------------------------
    def plot_spectrum(self, ax=None):
        """The eigenvalues in ascending order, the eigengap marked."""
        from .viz import _plt
        plt = _plt()
        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        k = np.arange(1, len(self.eigenvalues) + 1)
        ax.plot(k, self.eigenvalues, "o-", ms=3)
        g = self.proposed_clusters
        if g < len(self.eigenvalues):
            ax.annotate("", (g + 0.5, self.eigenvalues[g]), (g + 0.5, self.eigenvalues[g - 1]),
                        arrowprops=dict(arrowstyle="<->", color="C3"))  # between points g and g + 1
            ax.axvline(g + 0.5, color="C3", ls=":", lw=1)
            ax.set_title(f"eigenvalues: largest gap after {g}", fontsize="small")
        ax.set_xlabel("index")
        ax.set_ylabel("Laplacian eigenvalue")
        return ax.figure

    def plot_embedding(self, ax=None, truth=None):
        """The 2-D embedding coloured by cluster (``truth``: a boolean mask drawn as rings)."""
        from .viz import _plt
        plt = _plt()
        if ax is None:
            _, ax = plt.subplots(figsize=(4, 4))
        e = self.embedding if self.embedding is not None else row_normalize(self.eigenvectors[:, 1:3])
        for c in range(self.n_clusters):
            m = self.labels == c
            ax.scatter(e[m, 0], e[m, 1], s=8, label=f"cluster {c} ({m.sum()})")
        if truth is not None:
            t = np.asarray(truth, dtype=bool)
            ax.scatter(e[t, 0], e[t, 1], s=30, facecolors="none", edgecolors="k", lw=0.6, label="marked")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize="x-small")
        ax.set_title("t-SNE of the spectral embedding" if self.embedding is not None else "eigenvectors 2-3",
                     fontsize="small")
        return ax.figure

    def plot_clusters(self, images=None, examples=4, size=1.4, cmap="bwr"):
        """One row per cluster: its mean heatmap, then a few members (image beside heatmap)."""
        from .viz import _plt, heatmap
        plt = _plt()
        cols = 1 + examples * (2 if images is not None else 1)
        fig, axes = plt.subplots(self.n_clusters, cols, figsize=(size * cols, size * self.n_clusters),
                                 squeeze=False)
        for c in range(self.n_clusters):
            heatmap(self.means[c], ax=axes[c, 0], title=f"cluster {c}: mean ({self.sizes[c]})", cmap=cmap)
            members = self.members(c)[:examples]
            col = 1
            for i in members:
                if images is not None:
                    axes[c, col].imshow(np.asarray(images[i]).reshape(self.means.shape[1:]), cmap="gray")
                    axes[c, col].set_title(f"#{i}", fontsize="x-small")
                    col += 1
                heatmap(self.relevance_maps[i], ax=axes[c, col], cmap=cmap)
                col += 1
            for ax in axes[c, col:]:
                ax.axis("off")
            for ax in axes[c]:
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        return fig

    def report(self, images=None, truth=None, examples=4):
        """One figure: spectrum, embedding and the clusters' mean heatmaps with members."""
        from .viz import _plt, heatmap
        plt = _plt()
        rows = max(2, self.n_clusters)
        cols = 2 + 1 + examples * (2 if images is not None else 1)
        fig = plt.figure(figsize=(1.5 * cols + 2, 1.6 * rows + 0.5))
        grid = fig.add_gridspec(rows, cols)
        self.plot_spectrum(fig.add_subplot(grid[: rows // 2, :2]))
        self.plot_embedding(fig.add_subplot(grid[rows // 2:, :2]), truth)
        for c in range(self.n_clusters):
            heatmap(self.means[c], ax=fig.add_subplot(grid[c, 2]), title=f"cluster {c}: mean ({self.sizes[c]})")
            col = 3
            for i in self.members(c)[:examples]:
                if images is not None:
                    ax = fig.add_subplot(grid[c, col])
                    ax.imshow(np.asarray(images[i]).reshape(self.means.shape[1:]), cmap="gray")
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.set_title(f"#{i}", fontsize="x-small")
                    col += 1
                heatmap(self.relevance_maps[i], ax=fig.add_subplot(grid[c, col]))
                col += 1
        fig.tight_layout()
        return fig


def analyze(relevance, n_clusters=None, n_neighbors=10, n_eigval=32, absolute=False, pool=1, normalize=True,
            clustering="kmeans", embedding="tsne", max_clusters=None, seed=0, threads=1):
    """Spectral relevance analysis of one class's heatmaps.

    Parameters
    ----------
    relevance : ndarray of shape (N, C, H, W) or (N, H, W)
        Heatmaps of one class (e.g. :func:`explain_class`).
    n_clusters : int, optional
        Default: the eigengap's proposal.
    n_neighbors : int
        Of the kNN graph (CoRelAy's default 10); must be below N.
    n_eigval : int
        Eigenpairs computed (CoRelAy's default 32; at most N, and at least ``n_clusters``).
    absolute, pool, normalize
        See :func:`preprocess`.
    clustering : "kmeans" or "agglomerative"
        On the first ``n_clusters`` eigenvectors, rows scaled to unit length.
    embedding : "tsne", "umap" or None
        The 2-D picture of the spectral embedding (rows of all ``n_eigval`` eigenvectors scaled to
        unit length).
    max_clusters : int, optional
        The largest number the eigengap may propose.
    seed : int
    threads : int or None
        BLAS and OpenMP threads of scipy and scikit-learn (threadpoolctl) during the analysis.  One
        by default: on a busy machine scikit-learn's OpenMP loops (t-SNE, k-means) spin while they
        wait for a core, and two threads made t-SNE of 60 points 20 times slower than one (measured
        on 2 shared cores).  None leaves the libraries' own setting.

    Returns
    -------
    SpRAyResult

    Raises
    ------
    ShapeError, NonFiniteError, ParameterError
        Not a batch of finite heatmaps; a heatmap with no relevance; fewer heatmaps than
        ``n_neighbors + 1`` or than ``n_clusters``.
    """
    _sklearn("clustering")
    from threadpoolctl import threadpool_limits
    if threads is not None:
        threads = _int(threads, "threads")
    with threadpool_limits(limits=threads):
        return _analyze(relevance, n_clusters, n_neighbors, n_eigval, absolute, pool, normalize, clustering,
                        embedding, max_clusters, seed)


def _analyze(relevance, n_clusters, n_neighbors, n_eigval, absolute, pool, normalize, clustering, embedding,
             max_clusters, seed):
    import time
    times = {}
    t = time.perf_counter()
    maps = _maps(relevance)
    features = preprocess(maps, absolute, pool, normalize)
    n = len(features)
    if n_clusters is not None:
        n_clusters = _int(n_clusters, "n_clusters")
        if n_clusters > n:
            raise ParameterError(f"n_clusters={n_clusters} is more than the {n} heatmaps")
    if clustering not in ("kmeans", "agglomerative"):
        raise RuleParameterError(f"clustering must be 'kmeans' or 'agglomerative', got {clustering!r}")
    if embedding not in ("tsne", "umap", None):
        raise RuleParameterError(f"embedding must be 'tsne', 'umap' or None, got {embedding!r}")
    n_eigval = min(max(_int(n_eigval, "n_eigval", 2), n_clusters or 2), n)
    times["preprocess"] = time.perf_counter() - t
    t = time.perf_counter()
    affinity = knn_affinity(features, n_neighbors)
    times["knn"] = time.perf_counter() - t
    t = time.perf_counter()
    values, vectors, components = _spectrum(affinity, n_eigval, seed)
    times["eigen"] = time.perf_counter() - t
    proposed = eigengap(values, max_clusters)
    k = proposed if n_clusters is None else n_clusters
    t = time.perf_counter()
    labels = _cluster(row_normalize(vectors[:, :k]), k, clustering, seed)
    sizes = np.bincount(labels, minlength=k)
    rank = np.empty(k, dtype=np.int64)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(k)  # cluster 0 is the largest
    labels = rank[labels]
    times["cluster"] = time.perf_counter() - t
    t = time.perf_counter()
    embedded = _embed(row_normalize(vectors), embedding, seed)
    times["embedding"] = time.perf_counter() - t
    scaled = preprocess(maps, absolute, 1, normalize).reshape(maps.shape)
    means = np.stack([scaled[labels == c].mean(axis=0) for c in range(k)])
    return SpRAyResult(eigenvalues=values, eigenvectors=vectors, components=components, proposed_clusters=proposed,
                       n_clusters=k, labels=labels, embedding=embedded, means=means, features=features,
                       relevance_maps=maps, times=times)


def _spectrum(affinity, n_eigval, seed):
    """:func:`spectral_embedding`'s solve, from a ready affinity matrix."""
    from scipy.sparse.csgraph import connected_components
    n = affinity.shape[0]
    lap = laplacian(affinity)
    degree = np.asarray(affinity.sum(axis=1)).ravel()
    n_comp, components = connected_components(affinity, directed=False)
    values, vectors = [], []
    for c in range(n_comp):
        idx = np.flatnonzero(components == c)
        val, vec = _component_spectrum(lap[idx][:, idx], degree[idx], n_eigval, seed)
        full = np.zeros((n, vec.shape[1]))
        full[idx] = vec
        values.append(val)
        vectors.append(full)
    values, vectors = np.concatenate(values), np.concatenate(vectors, axis=1)
    order = np.argsort(values, kind="stable")[:n_eigval]
    return values[order], vectors[:, order], components


# ---------------------------------------------------------------------------------------------
# heatmaps of a class, and comparing classifiers


def _how(x, composite=None, method=None, rule=None):
    """explain_dataset's keywords: a composite (object or name), a rule, or a method name/function."""
    from . import composites
    if method is not None:
        return {"method": method}
    if rule is not None:
        return {"rule": rule}
    composite = "epsilon_plus" if composite is None else composite
    if isinstance(composite, str):
        composite = composites.get(composite, data=np.asarray(x[:256]))
    return {"composite": composite}


def explain_class(model, x, klass, composite=None, method=None, rule=None, batch_size=256, scheduler=None,
                  progress=False):
    """The relevance of every input in ``x`` for class ``klass``, computed in chunks by
    :func:`lrpnumpy.parallel.explain_dataset` (serially, or on Dask with ``scheduler``).

    ``composite`` is a composite or its name (default ``"epsilon_plus"``; a name's parameters are
    read from the data); or give ``method`` (a name of :data:`lrpnumpy.methods.REGISTRY`) or ``rule``.
    """
    from .parallel import explain_dataset
    return explain_dataset(model, x, target=int(klass), batch_size=batch_size, scheduler=scheduler,
                           progress=progress, **_how(x, composite, method, rule))


class ClassifierComparison:
    """Per-model relevance statistics for one class, side by side (:func:`compare`).

    Attributes
    ----------
    rows : list of dict
        Per model: ``model``, ``accuracy`` (when labels were given), ``score`` (mean logit of the
        class), ``inside`` (mean share of positive relevance inside the region; None without one)
        and ``outside`` (:func:`lrpnumpy.evaluate.context`, its complement).
    means : dict of str to ndarray (H, W)
        Each model's mean heatmap (each heatmap divided by its total absolute relevance first).
    similarity : ndarray (M, M)
        Cosine similarity of the mean heatmaps.
    """

    def __init__(self, rows, means, region, klass):
        self.rows, self.means, self.region, self.klass = rows, means, region, klass
        m = np.stack([v.ravel() for v in means.values()])
        norm = np.linalg.norm(m, axis=1)
        self.similarity = (m @ m.T) / np.maximum(np.outer(norm, norm), 1e-300)

    def __repr__(self):
        head = f"{'model':<24} {'accuracy':>9} {'score':>9} {'inside':>8}"
        lines = [head]
        for r in self.rows:
            acc = "" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
            inside = "" if r["inside"] is None else f"{r['inside']:.4f}"
            lines.append(f"{r['model']:<24} {acc:>9} {r['score']:>9.4f} {inside:>8}")
        return "\n".join(lines)

    def to_dict(self):
        return {"class": self.klass, "rows": self.rows, "similarity": self.similarity.tolist()}

    def plot(self, size=2.2):
        """The models' mean heatmaps in a row, the region outlined, the share inside in the title."""
        from .viz import _plt, heatmap
        plt = _plt()
        fig, axes = plt.subplots(1, len(self.means), figsize=(size * len(self.means), size + 0.4), squeeze=False)
        for ax, row in zip(axes[0], self.rows):
            inside = "" if row["inside"] is None else f"\n{row['inside']:.0%} inside the region"
            heatmap(self.means[row["model"]], ax=ax, title=f"{row['model']}{inside}")
            if self.region is not None:
                ax.contour(self.region.astype(float), levels=[0.5], colors="k", linewidths=0.8)
        fig.tight_layout()
        return fig


def compare(models, x, klass, labels=None, region=None, composite=None, method=None, rule=None, batch_size=256,
            scheduler=None):
    """The slides' "same performance, same strategy?": relevance statistics of one class for several models.

    Parameters
    ----------
    models : dict of str to model
    x : ndarray (N, C, H, W)
        Inputs explained for class ``klass`` by every model.
    klass : int
    labels : ndarray (N,), optional
        With them each model's accuracy on ``x`` is reported.
    region : boolean ndarray (H, W) or (N, H, W), optional
        E.g. :func:`mark_region`: the share of positive relevance inside it.
    composite, method, rule
        How to explain (as for :func:`explain_class`).

    Returns
    -------
    ClassifierComparison
    """
    from .evaluate import context
    from .train import predict
    if not isinstance(models, dict) or not models:
        raise ParameterError(f"models must be a non-empty dict of name -> model, got {type(models).__name__}")
    x = np.asarray(x)
    if x.ndim != 4:
        raise ShapeError(f"x must have shape (N, C, H, W), got {x.shape}")
    if len(x) == 0:
        raise ShapeError("x holds no inputs")
    if labels is not None and np.shape(labels) != (len(x),):
        raise ShapeError(f"labels need one class per input ({len(x)}), got shape {np.shape(labels)}")
    rows, means = [], {}
    for name, net in models.items():
        r = explain_class(net, x, klass, composite, method, rule, batch_size, scheduler)
        maps = _maps(r)
        total = np.abs(maps).reshape(len(maps), -1).sum(axis=1)
        scaled = maps / np.where(total > 0, total, 1.0)[:, None, None]
        means[name] = scaled.mean(axis=0)
        logits = np.concatenate([net.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])
        row = {"model": name, "score": float(logits[:, klass].mean()),
               "accuracy": None if labels is None else float((predict(net, x) == np.asarray(labels)).mean()),
               "inside": None, "outside": None}
        if region is not None:
            outside = context(maps, region, kind="positive")
            row["inside"], row["outside"] = float(1 - outside.mean()), float(outside.mean())
        rows.append(row)
    return ClassifierComparison(rows, means, None if region is None else np.asarray(region, dtype=bool), int(klass))


# ---------------------------------------------------------------------------------------------
# command line: lrpnumpy spray MODEL DATA --class K


def add_parser(sub, positive_int):
    """The ``spray`` subcommand's arguments (added to lrpnumpy's command line)."""
    p = sub.add_parser("spray", help="spectral relevance analysis: cluster one class's heatmaps by strategy "
                                     "(finds Clever Hans)")
    p.add_argument("model", help="a model file (.npz, .onnx, .txt, .prototxt) or a built-in name")
    p.add_argument("data", help="inputs: a .npy array, an IDX images file, or 'sample' (the shipped 1,000 "
                                "Fashion-MNIST test images, with labels)")
    p.add_argument("--class", dest="klass", type=int, required=True, help="the class whose heatmaps are analysed")
    p.add_argument("--labels", help="labels (.npy or IDX) of DATA: analyse the inputs of the class (default: the "
                                    "inputs the model predicts as the class; 'sample' has its own)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--composite", default="epsilon_plus", help="a composite: NAME[:key=value,...], as for explain "
                                                                 "(default %(default)s)")
    how.add_argument("--rule", help="one rule on every Linear/Conv2d layer: NAME[:key=value,...], as for explain")
    how.add_argument("--method", help="a method instead of LRP: NAME[:key=value,...], as for explain (e.g. "
                                      "integrated_gradients:n=64)")
    p.add_argument("--clusters", type=positive_int, help="number of clusters (default: the eigengap's)")
    p.add_argument("--neighbors", type=positive_int, default=10, help="of the kNN graph (default %(default)s)")
    p.add_argument("--eigenvalues", type=positive_int, default=32, help="computed (default %(default)s)")
    p.add_argument("--pool", type=positive_int, default=1, help="sum pooling before the graph (default 1: none)")
    p.add_argument("--absolute", action="store_true", help="cluster |R| instead of signed relevance")
    p.add_argument("--clustering", choices=["kmeans", "agglomerative"], default="kmeans")
    p.add_argument("--embedding", choices=["tsne", "umap", "none"], default="tsne")
    p.add_argument("--out", help="write the report figure (spectrum, embedding, clusters) to this PNG/PDF")
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def _read_array(path):
    from .datasets import load_idx
    if path.endswith(".npy"):
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ShapeError(f"{path}: not a readable .npy array ({exc})") from None
    return load_idx(path)


def cli(args, load_model, keywords=None):
    """Run ``lrpnumpy spray`` (the parsed arguments); prints a summary or JSON, returns the exit code.

    ``keywords(args, x)`` gives :func:`explain_class`'s keywords from ``--composite``, ``--rule`` or ``--method``
    (the command line's ``NAME[:key=value,...]``); without it, the names are used as they are."""
    import json
    from .datasets import sample
    from .train import predict
    net = load_model(args.model)
    dtype = net.dtype or np.float64
    if args.data == "sample":
        s = sample(dtype)
        x, labels = s.images, s.labels
    else:
        x = _read_array(args.data)
        if x.dtype == np.uint8:  # IDX images (or a .npy of them): 0..255 -> [0, 1]
            x = x.astype(dtype) / 255.0
        x = np.asarray(x, dtype=dtype)
        x = x[:, None] if x.ndim == 3 else x
        labels = None if args.labels is None else np.asarray(_read_array(args.labels))
    if x.ndim != 4:
        raise ShapeError(f"{args.data}: inputs must be (N, C, H, W) or (N, H, W), got shape {x.shape}")
    classes = net.meta.get("classes") if isinstance(getattr(net, "meta", None), dict) else None
    n_out = len(classes) if classes else None
    if args.klass < 0 or (n_out is not None and args.klass >= n_out):
        from .errors import TargetError
        raise TargetError(f"--class {args.klass} is not a class of the model (0..{(n_out or 1) - 1})")
    if labels is not None:
        if labels.shape != (len(x),):
            raise ShapeError(f"labels of shape {labels.shape} do not fit {len(x)} inputs")
        chosen = np.flatnonzero(labels == args.klass)
        how = "labelled"
    else:
        chosen = np.flatnonzero(predict(net, x) == args.klass)
        how = "predicted as"
    if len(chosen) == 0:
        raise ParameterError(f"no input of {args.data} is {how} class {args.klass}")
    if keywords is not None:
        kwargs = keywords(args, x[chosen][:256])
    else:
        kwargs = {"method": args.method} if args.method else {"composite": args.composite}
    relevance = explain_class(net, x[chosen], args.klass, **kwargs)
    res = analyze(relevance, n_clusters=args.clusters, n_neighbors=args.neighbors, n_eigval=args.eigenvalues,
                  absolute=args.absolute, pool=args.pool, clustering=args.clustering,
                  embedding=None if args.embedding == "none" else args.embedding)
    members = {c: chosen[res.members(c)].tolist() for c in range(res.n_clusters)}
    if args.out:
        from .viz import save
        save(res.report(images=x[chosen, 0]), args.out)
    if args.json:
        out = res.to_dict()
        out.update({"class": args.klass, "class_name": classes[args.klass] if classes else None, "selected": how,
                    "indices": chosen.tolist(), "members": {str(c): m for c, m in members.items()}, "out": args.out})
        print(json.dumps(out))
        return 0
    name = f" ({classes[args.klass]!r})" if classes else ""
    print(f"{len(chosen)} inputs {how} class {args.klass}{name}; eigenvalues "
          f"{' '.join(f'{v:.4f}' for v in res.eigenvalues[:8])} ...")
    print(f"the eigengap proposes {res.proposed_clusters} cluster(s); {res.n_clusters} used; kNN graph of "
          f"{len(np.unique(res.components))} component(s)")
    for c, m in members.items():
        print(f"cluster {c}: {len(m)} inputs, e.g. {m[:8]}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
