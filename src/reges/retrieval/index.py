"""Stage `index`: embed every item card and build a FAISS inner-product index over them.

Files written under `run_dir/index/`:
    index.faiss      the FAISS index; row i is the item on line i of item_ids.txt
    item_ids.txt     one item id per line, in catalog order
    embeddings.npy   (num_items, dim) float32, L2-normalised card embeddings (for training and analysis)
    index.json       encoder name, dim, index type and search parameters, so `ItemIndex.load` needs no config
    manifest.json    written last

Index types (`index.index_type`):
    flat  exact inner product (`IndexFlatIP`); the default, and exact for catalogs up to ~1e6 items.
    ivf   `IndexIVFFlat` over `nlist` k-means cells, `nprobe` of them searched per query; needs training.
    hnsw  `IndexHNSWFlat` (inner product), graph degree `hnsw_m`, search breadth `ef_search`.
All three score by inner product, which equals cosine similarity because every vector is unit length.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from reges.catalog import read_catalog
from reges.config import IndexConfig, PipelineConfig
from reges.errors import CatalogError, ConfigError, DataError, ModelError
from reges.io import RunDir, atomic_open, now_iso, read_json, write_json
from reges.llm.models import resolve_device
from reges.records import Hit
from reges.retrieval.encoder import SentenceEncoder, load_encoder

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "item_ids.txt"
EMBEDDINGS_FILE = "embeddings.npy"
META_FILE = "index.json"

# Extra rows fetched beyond top_k so that ties at the cut-off can be ordered by item_id; doubled while a
# tie still reaches the last fetched row, so the top_k list is the same whatever order FAISS returns ties in.
_TIE_MARGIN = 16


def build_faiss_index(embeddings: np.ndarray, cfg: IndexConfig, seed: int) -> faiss.Index:
    """Build a FAISS inner-product index of the type `cfg.index_type` over `embeddings`.

    Args:
        embeddings: (num_items, dim) float32, L2-normalised.
        cfg: Index type and its parameters (nlist/nprobe for ivf, hnsw_m/ef_construction/ef_search for hnsw).
        seed: Seed for IVF k-means, so the same catalog gives the same cells.

    Raises:
        CatalogError: no rows to index.
        ConfigError: an unknown index type (the parameters' ranges are checked by IndexConfig).
    """
    num_items, dim = embeddings.shape
    if num_items == 0:
        raise CatalogError("cannot build an index over an empty catalog; check catalog/items.jsonl")
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if cfg.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif cfg.index_type == "ivf":
        nlist = cfg.nlist
        if nlist > num_items:
            logger.warning("index.nlist=%d exceeds the catalog size %d; using nlist=%d", nlist, num_items, num_items)
            nlist = num_items
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.train(x)
        index.nprobe = min(cfg.nprobe, nlist)
    elif cfg.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.ef_construction
        index.hnsw.efSearch = cfg.ef_search
    else:
        raise ConfigError(f"index.index_type must be 'flat', 'ivf' or 'hnsw', got {cfg.index_type!r}")
    index.add(x)
    return index


def _set_search_params(index: faiss.Index, nprobe: int | None, ef_search: int | None) -> None:
    if nprobe and isinstance(index, faiss.IndexIVF):
        index.nprobe = min(nprobe, index.nlist)
    if ef_search and isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = ef_search


class ItemIndex:
    """A FAISS index plus the row-aligned item ids: query embeddings in, ranked `Hit`s out.

    Example:
        >>> index = ItemIndex.from_embeddings(card_embeddings, item_ids, IndexConfig(), seed=0)
        >>> index.search(query_embeddings, top_k=50)[0][:2]
        [Hit(item_id='2048', score=0.61), Hit(item_id='77', score=0.58)]
        >>> index.save("runs/x/index"); ItemIndex.load("runs/x/index")
    """

    def __init__(self, index: faiss.Index, item_ids: list[str], meta: dict[str, Any]) -> None:
        if not item_ids:
            raise CatalogError("the index holds no items; rebuild it from a non-empty catalog with `reges index`")
        if index.ntotal != len(item_ids):
            raise DataError(f"the FAISS index has {index.ntotal} rows but there are {len(item_ids)} item ids")
        if len(set(item_ids)) != len(item_ids):
            raise CatalogError("item ids in the index are not unique; rebuild the catalog and the index")
        self.index = index
        self.item_ids = item_ids
        self.meta = meta

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def encoder(self) -> str:
        """Name or path of the encoder that embedded the cards ("" when built from raw embeddings)."""
        return str(self.meta.get("encoder", ""))

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray,
        item_ids: list[str],
        cfg: IndexConfig,
        seed: int,
        encoder: str = "",
        max_seq_length: int | None = None,
    ) -> ItemIndex:
        """Build an index in memory from card embeddings (rows aligned with `item_ids`).

        `encoder` and `max_seq_length` name the encoder that embedded the cards (recorded in index.json, so queries
        are embedded the same way); leave them out for raw embeddings.
        """
        if embeddings.ndim != 2 or embeddings.shape[0] != len(item_ids):
            raise DataError(f"embeddings of shape {embeddings.shape} do not match {len(item_ids)} item ids")
        index = build_faiss_index(embeddings, cfg, seed)
        meta = {
            "encoder": encoder,
            "dim": int(embeddings.shape[1]),
            "rows": len(item_ids),
            "index_type": cfg.index_type,
            "nprobe": int(index.nprobe) if isinstance(index, faiss.IndexIVF) else None,
            "nlist": int(index.nlist) if isinstance(index, faiss.IndexIVF) else None,
            "ef_search": cfg.ef_search if cfg.index_type == "hnsw" else None,
            "hnsw_m": cfg.hnsw_m if cfg.index_type == "hnsw" else None,
            "ef_construction": cfg.ef_construction if cfg.index_type == "hnsw" else None,
            "max_seq_length": max_seq_length,
        }
        return cls(index, list(item_ids), meta)

    def save(self, path: str | Path, embeddings: np.ndarray | None = None) -> None:
        """Write index.faiss, item_ids.txt and index.json into the folder `path` (atomically each), and the card
        embeddings the index was built from as embeddings.npy when given (what the distill teacher and the fused
        retriever read)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_open(path / INDEX_FILE, "wb") as f:
            f.write(faiss.serialize_index(self.index).tobytes())
        with atomic_open(path / IDS_FILE) as f:
            f.writelines(f"{item_id}\n" for item_id in self.item_ids)
        write_json(path / META_FILE, self.meta)
        if embeddings is not None:
            with atomic_open(path / EMBEDDINGS_FILE, "wb") as f:
                np.save(f, embeddings)

    @property
    def exact(self) -> bool:
        """True for a flat index: its search returns the true top-k."""
        return isinstance(self.index, faiss.IndexFlat)

    @classmethod
    def load(cls, path: str | Path, nprobe: int = 0, ef_search: int = 0) -> ItemIndex:
        """Load an index folder written by `save` (or by the index stage).

        Args:
            path: The index folder.
            nprobe: IVF cells searched per query instead of the stored `nprobe` (0: keep it); `retrieve.nprobe`.
            ef_search: HNSW search breadth instead of the stored `ef_search` (0: keep it); `retrieve.ef_search`.
                Search-time settings, so that trying another recall/latency trade-off needs no rebuild (which
                re-embeds every card: hours at 1e6 cards).

        Raises:
            DataError: a file is missing, or the index and the id list disagree.
        """
        path = Path(path)
        for name in (INDEX_FILE, IDS_FILE, META_FILE):
            if not (path / name).is_file():
                raise DataError(f"{path / name} not found; run `reges index` to build the index")
        index = faiss.deserialize_index(np.fromfile(path / INDEX_FILE, dtype=np.uint8))
        item_ids = [line.rstrip("\n") for line in (path / IDS_FILE).read_text(encoding="utf-8").splitlines()]
        meta = read_json(path / META_FILE)
        given = {"nprobe": nprobe, "ef_search": ef_search}
        for key, value in given.items():
            if value and meta.get(key) is not None and value != meta[key]:
                logger.info("index %s: %s=%d at search time (built with %d)", path, key, value, meta[key])
                meta = {**meta, key: value}
        _set_search_params(index, meta.get("nprobe"), meta.get("ef_search"))
        return cls(index, item_ids, meta)

    def search(self, query_embeddings: np.ndarray, top_k: int) -> list[list[Hit]]:
        """Top-k items per query, best first; equal scores are ordered by item_id.

        Args:
            query_embeddings: (num_queries, dim) float32, L2-normalised (zero rows score 0 everywhere).
            top_k: Hits per query; fewer when the catalog is smaller.

        Returns:
            One list of `Hit` per query row, sorted by (-score, item_id).
        """
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        q = np.ascontiguousarray(query_embeddings, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ModelError(
                f"query embeddings of shape {q.shape} do not fit the index dimension {self.dim}; "
                f"encode queries with the encoder that built the index ({self.encoder or 'unknown'})"
            )
        num_items = len(self.item_ids)
        want = min(top_k, num_items)
        results: list[list[Hit]] = [[] for _ in range(len(q))]
        pending = np.arange(len(q))
        depth = min(num_items, want + _TIE_MARGIN)
        while len(pending):
            scores, rows = self.index.search(q[pending], depth)  # (len(pending), depth) each
            retry = []
            for j, qi in enumerate(pending):
                valid = rows[j] >= 0  # IVF pads with -1 when the probed cells hold fewer rows
                s, r = scores[j][valid], rows[j][valid]
                if len(s) == depth < num_items and s[-1] == s[want - 1]:
                    retry.append(qi)  # the tie at the cut-off may continue past what was fetched
                    continue
                hits = [Hit(self.item_ids[row], float(score)) for score, row in zip(s, r, strict=True)]
                hits.sort(key=lambda h: (-h.score, h.item_id))
                results[qi] = hits[:want]
            pending = np.asarray(retry, dtype=np.int64)
            depth = min(num_items, depth * 2)
        return results


def run(cfg: PipelineConfig, run_dir: RunDir) -> None:
    """Embed every catalog card and write the index folder, then the manifest.

    Example:
        reges index --config configs/redial.yaml --run-dir runs/redial index.index_type=hnsw
    """
    started = now_iso()
    items_path = run_dir.require("catalog") / "items.jsonl"
    out = run_dir.begin("index", cfg.run.overwrite)
    items = read_catalog(items_path)
    device = resolve_device(cfg.index.device, "index.device")
    encoder = SentenceEncoder(load_encoder(cfg.index.encoder, device, cfg.index.max_seq_length))

    t0 = time.perf_counter()
    embeddings = encoder.encode([it.text for it in items], cfg.index.batch_size, cfg.run.show_progress)  # (n, dim)
    encode_s = time.perf_counter() - t0
    items_per_s = len(items) / encode_s if encode_s > 0 else float("inf")
    logger.info("embedded %d cards in %.1f s (%.0f items/s)", len(items), encode_s, items_per_s)

    t0 = time.perf_counter()
    index = ItemIndex.from_embeddings(
        embeddings, [it.item_id for it in items], cfg.index, cfg.run.seed, cfg.index.encoder, cfg.index.max_seq_length
    )
    build_s = time.perf_counter() - t0
    index.save(out, embeddings)

    rows = len(items)
    run_dir.finish(
        "index",
        config=dataclasses.asdict(cfg.index),
        inputs={"catalog": items_path},
        outputs={INDEX_FILE: rows, IDS_FILE: rows, EMBEDDINGS_FILE: rows},
        seed=cfg.run.seed,
        started=started,
        extra={
            "encoder": cfg.index.encoder,
            "device": device,
            "dim": index.dim,
            "rows": rows,
            "index_type": cfg.index.index_type,
            "encode_s": round(encode_s, 3),
            "build_s": round(build_s, 3),
            "items_per_s": round(items_per_s, 1),
        },
    )
