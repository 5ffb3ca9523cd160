"""Command line: argument parsing only; the work is in the library.

    python -m dedup run DIR [--out OUT] [--backbones auto|NAME,...] [...]
    python -m dedup query IMAGE [IMAGE...] --index OUT [-n 10]
    python -m dedup undo MANIFEST
    python -m dedup bench LABELS.csv [run options] [--out OUT]
    python -m dedup fit LABELS.csv --out MODEL [--root DIR]      (or: fit DIR --self-supervised --out MODEL)
    python -m dedup evaluate GROUPS.csv LABELS.csv
    python -m dedup weights [--weights-dir DIR]
    python -m dedup weights import DIR

Exit status: 0 when the command completed (skipped files included), 1 when
it could not run (the one-line reason is printed on stderr), 2 for bad usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from . import pipeline as P

log = logging.getLogger("dedup")


def _ranged(kind: type, lo: float | None = None, hi: float | None = None):
    """An argparse type: ``kind`` (int or float), finite, within [lo, hi]."""
    import math

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if (
            (isinstance(value, float) and not math.isfinite(value))
            or (lo is not None and value < lo)
            or (hi is not None and value > hi)
        ):
            bounds = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
            raise argparse.ArgumentTypeError(f"must lie in {bounds}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="dedup-out", help="output folder (default: ./dedup-out)")
    p.add_argument(
        "--similarity",
        choices=["content", "style", "semantic"],
        default="content",
        help="content (default): the CNN ensemble; style: texture and colour (Gram statistics + "
        "colour histogram, backbone style-lite0); semantic: what an image shows (ImageNet class "
        "posterior related through WordNet, backbone semantic-lite0; with --method hierarchical or kmeans)",
    )
    p.add_argument(
        "--backbones",
        default="auto",
        help="auto (default), or a comma-separated list of: vgg16, resnet50, inceptionv3, efficientnet-lite0",
    )
    _add_runtime_option(p)
    from dataclasses import fields

    from .grouping import GroupingParams

    for f in fields(GroupingParams):
        lo, hi = f.metadata["range"]
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=_ranged(f.metadata["type"], lo, hi),
            default=f.default,
            help=f"{f.metadata['help']} (in [{lo}, {hi}]; default {f.default}; see dedup.grouping.GroupingParams)",
        )
    p.add_argument(
        "--decisions",
        default=None,
        metavar="FILE",
        help="a reviewer's decisions CSV (path_a,path_b,decision = same|different), as the gallery "
        "downloads it: confirmed pairs join, rejected pairs never join; kept in the cache for "
        "later runs",
    )
    p.add_argument(
        "--pair-model",
        default=None,
        metavar="JSON",
        help="a pair model fitted by benchmarks/calibrate.py (default: the one shipped in dedup)",
    )
    p.add_argument(
        "--model",
        default=None,
        metavar="MODEL",
        help="a folder written by `dedup fit`: the fused kNN search runs in its learned projection, "
        "with its pair model (default: none, ImageNet features as they are)",
    )
    p.add_argument(
        "--force-model",
        action="store_true",
        help="apply --model even to images unlike those it was fitted on (by default it is then not used)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip geometric verification (RootSIFT + RANSAC; faster, finds fewer edited copies)",
    )
    p.add_argument(
        "--verify-all",
        action="store_true",
        help="verify every candidate pair (default: only those whose decision verification can change)",
    )
    p.add_argument(
        "--neighbours",
        type=_ranged(int, 1, 1000),
        default=P.DEFAULT_K,
        help=f"ANN neighbours per image taken as candidates (default {P.DEFAULT_K})",
    )
    p.add_argument(
        "--phash-distance",
        type=_ranged(int, 0, 16),
        default=None,
        help="Hamming distance (bits of 64) of the pHash pass, 0..16 (default 4)",
    )
    p.add_argument("--batch-size", type=_ranged(int, 1, 4096), default=32)
    p.add_argument("--workers", type=_ranged(int, 1, 256), default=2, help="decoding threads (default 2)")
    p.add_argument(
        "--processes",
        type=_ranged(int, 0, 256),
        default=0,
        help="decode in N spawn-started worker processes instead of threads (default 0: threads)",
    )
    p.add_argument("--cache", default=None, help="SQLite cache file (default OUT/cache.sqlite)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write a cache")
    p.add_argument("--weights-dir", default=None, help="extra folder searched for weights files")
    p.add_argument(
        "--download-weights",
        action="store_true",
        help="let Keras download missing ImageNet weights of named backbones (needs network)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars, only errors")


def _add_runtime_option(p: argparse.ArgumentParser) -> None:
    from .backbones.runtime import RUNTIMES

    p.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default="auto",
        help="inference runtime of the backbones: auto (default: the fastest installed, measured by "
        "benchmarks/speed.py: ONNX Runtime for efficientnet-lite0, OpenVINO for the Keras trio), "
        "native (PyTorch/TensorFlow), onnxruntime, openvino",
    )


def _add_fit_parser(sub) -> None:
    from .adapt import DEFAULT_DIM, DEFAULT_FOLDS, DEFAULT_SHRINKAGE, DEFAULT_VIEWS

    f = sub.add_parser(
        "fit",
        help="learn features adapted to your catalogue, from labels (LABELS.csv: path,group) "
        "or from the photos alone (DIR --self-supervised)",
    )
    f.add_argument(
        "source",
        help="LABELS.csv (columns path,group; paths relative to its folder or --root), "
        "or a folder of images with --self-supervised",
    )
    f.add_argument("--out", required=True, help="the model folder to write (use it with `run --model`)")
    f.add_argument("--self-supervised", action="store_true", help="SOURCE is a folder of unlabelled images")
    f.add_argument("--root", default=None, help="folder the label paths are relative to (default: its folder)")
    f.add_argument("--backbones", default="auto", help="as for `run` (default auto)")
    _add_runtime_option(f)
    f.add_argument("--dim", type=_ranged(int, 1, 8192), default=DEFAULT_DIM, help=f"output dimensions ({DEFAULT_DIM})")
    f.add_argument(
        "--shrinkage",
        type=_ranged(float, 0.0, 1e6),
        default=DEFAULT_SHRINKAGE,
        help=f"identity shrinkage of the matching covariance ({DEFAULT_SHRINKAGE})",
    )
    f.add_argument(
        "--folds", type=_ranged(int, 2, 20), default=DEFAULT_FOLDS, help="folds of the out-of-fold calibration"
    )
    f.add_argument(
        "--views", type=_ranged(int, 1, 8), default=DEFAULT_VIEWS, help="augmented views per photo (self-supervised)"
    )
    f.add_argument("--no-verify", action="store_true", help="do not verify the calibration pairs geometrically")
    f.add_argument("--batch-size", type=_ranged(int, 1, 4096), default=32)
    f.add_argument("--workers", type=_ranged(int, 1, 256), default=2, help="decoding threads (default 2)")
    f.add_argument(
        "--cache",
        default=None,
        help="SQLite cache file (default OUT/cache.sqlite; pass a run's cache to reuse its embeddings)",
    )
    f.add_argument("--no-cache", action="store_true", help="do not read or write a cache")
    f.add_argument("--weights-dir", default=None, help="extra folder searched for weights files")
    f.add_argument("--quiet", "-q", action="store_true", help="no progress bars, only errors")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dedup``."""
    parser = argparse.ArgumentParser(
        prog="python -m dedup", description="Group the images of a catalogue that show the same product."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="group the images under DIR")
    run.add_argument(
        "dir",
        nargs="?",
        default=None,
        metavar="SOURCE",
        help="folder of images (walked recursively; never written to), or a quoted glob ('pics/**/*.jpg')",
    )
    run.add_argument(
        "--manifest",
        default=None,
        metavar="FILE",
        help="instead of SOURCE: a Parquet or CSV table of image paths (absolute or relative to it) or URLs "
        "(s3://, https://, ... read through fsspec with that protocol's package); read by pandas, so an "
        "fsspec URL works for the table too",
    )
    run.add_argument("--image-col", default="path", help="the manifest's column of image paths (default: path)")
    _add_run_options(run)
    eng = run.add_argument_group("engine")
    eng.add_argument(
        "--engine",
        choices=P.ENGINES,
        default="local",
        help="local (default): this process; spark: hashing, decoding, embedding, the neighbour lists "
        "and the pHash search as PySpark jobs (needs pyspark and Java 17+), the same groups",
    )
    eng.add_argument("--master", default="local[*]", help="Spark master URL with --engine spark (default local[*])")
    eng.add_argument(
        "--features",
        default=None,
        metavar="DIR",
        help="Spark features folder: Parquet tables of facts and embeddings by content, reused by later "
        "runs (default OUT/features; any path Spark writes, e.g. s3a://...)",
    )
    v = run.add_argument_group("views (on top of the same embeddings)")
    v.add_argument(
        "--method",
        choices=["group", "hierarchical", "kmeans"],
        default="group",
        help="group (default): the dedup grouping; hierarchical: average linkage cut at --sim; kmeans: --k clusters",
    )
    v.add_argument(
        "--sim",
        type=_ranged(float, 0.0, 1.0),
        default=0.5,
        help="similarity level of the hierarchical cut, 0..1: clusters whose average cosine similarity "
        "is >= SIM (0 = one cluster, 1 = every image alone; default 0.5)",
    )
    v.add_argument("--k", dest="k_clusters", type=_ranged(int, 1), default=8, help="number of k-means clusters")
    v.add_argument("--min-size", type=_ranged(int, 1), default=1, help="smallest cluster reported (default 1)")
    v.add_argument(
        "--pca", type=_ranged(int, 1), default=None, help="reduce embeddings to N principal components first"
    )
    v.add_argument(
        "--time-weight",
        type=_ranged(float, 0.0),
        default=0.0,
        help="ALPHA: add ALPHA * min(1, |capture time difference| / 1 day) to the content distance",
    )
    v.add_argument(
        "--link-dir", default=None, help="write PATH/cluster_with_N/cluster_i/ folders of symlinks to the originals"
    )
    v.add_argument("--map", action="store_true", help="write OUT/map.png, a t-SNE map coloured by group")
    v.add_argument("--no-gallery", action="store_true", help="do not write OUT/gallery.html")
    run.add_argument(
        "--move-duplicates",
        metavar="PATH",
        default=None,
        help="move all but one image of each group (largest resolution, then file) into PATH, "
        "keeping relative paths, and write PATH/moved-manifest.jsonl for `undo`",
    )

    q = sub.add_parser("query", help="the N catalogue images most similar to each query image")
    q.add_argument("images", nargs="+", help="query image files (need not be in the catalogue)")
    q.add_argument("--index", required=True, help="the --out folder of a `dedup run` on the catalogue")
    q.add_argument("-n", type=_ranged(int, 1), default=10, help="results per query (default 10)")
    q.add_argument("--csv", default=None, help="write the results here (default INDEX/query.csv)")
    q.add_argument("--weights-dir", default=None)

    u = sub.add_parser("undo", help="put back every file moved by --move-duplicates")
    u.add_argument("manifest", help="the moved-manifest.jsonl written by --move-duplicates")

    b = sub.add_parser("bench", help="run the main job on a labelled set (path,group CSV) and score it")
    b.add_argument("labels", help="LABELS.csv with columns path,group; paths relative to its folder")
    _add_run_options(b)
    b.set_defaults(out="dedup-bench")

    _add_fit_parser(sub)

    e = sub.add_parser("evaluate", help="compare an existing groups.csv with a labels.csv")
    e.add_argument("groups", help="GROUPS.csv (path,group)")
    e.add_argument("labels", help="LABELS.csv (path,group)")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")

    w = sub.add_parser(
        "weights",
        help="list the ImageNet weights files and their status; "
        "`weights import DIR` copies verified files into Keras's cache",
    )
    w.add_argument("action", nargs="?", choices=["list", "import"], default="list")
    w.add_argument("src", nargs="?", help="folder to import from (with `import`)")
    w.add_argument("--weights-dir", default=None)
    return parser


def _make(args) -> P.Deduplicator:
    from .grouping import GroupingParams
    from .hashing import DEFAULT_PHASH_MAX_DISTANCE

    cache = False if args.no_cache else (args.cache or str(Path(args.out) / "cache.sqlite"))
    backbones = {"style": "style-lite0", "semantic": "semantic-lite0"}.get(args.similarity, args.backbones)
    grouping = GroupingParams(**{name: getattr(args, name) for name in GroupingParams.help()})
    return P.Deduplicator(
        backbones=backbones,
        grouping=grouping,
        # semantic clusters are a view, not duplicate groups: no geometric verification to pay for
        verify=not args.no_verify and args.similarity != "semantic",
        verify_all=args.verify_all,
        n_neighbours=args.neighbours,
        model_path=args.pair_model,
        model=args.model,
        force_model=args.force_model,
        decisions=args.decisions,
        phash_max_distance=DEFAULT_PHASH_MAX_DISTANCE if args.phash_distance is None else args.phash_distance,
        batch_size=args.batch_size,
        workers=args.workers,
        processes=args.processes,
        cache=cache,
        weights_dir=args.weights_dir,
        allow_download=args.download_weights,
        progress=not args.quiet,
        runtime=args.runtime,
        **_engine_options(args),
    )


def _engine_options(args) -> dict:
    if getattr(args, "engine", "local") == "local":
        return {}
    return {
        "engine": args.engine,
        "spark_master": args.master,
        "features": args.features or str(Path(args.out) / "features"),
    }


def cmd_run(args) -> int:
    """`run DIR`: the whole job (:func:`dedup.job.run_job`); returns the exit status."""
    from .actions import MANIFEST
    from .discover import resolve_source
    from .job import ViewOptions, check_outside, input_folders, run_job
    from .report import summary

    if (args.dir is None) == (args.manifest is None):
        raise ValueError("run: give either SOURCE (a folder or a glob) or --manifest FILE")
    # run_job checks these too; checked here first so that a bad path fails before weights are loaded
    root, files = resolve_source(args.dir, args.manifest, args.image_col)
    outputs = dict(out=args.out, cache=args.cache, features=args.features, link_dir=args.link_dir)
    for folder in input_folders(root, files):
        check_outside(folder, **outputs, move_duplicates=args.move_duplicates)
    if args.similarity == "semantic" and args.method == "group":
        raise ValueError("--similarity semantic clusters by what images show: add --method hierarchical or kmeans")
    dd = _make(args)
    nets, note = dd.check()  # weights problems stop here, before any image work
    print(("NOTE: " if "FELL BACK" in note else "") + note, flush=True)
    view = ViewOptions(
        method=args.method,
        sim=args.sim,
        k=args.k_clusters,
        min_size=args.min_size,
        pca=args.pca,
        time_weight=args.time_weight,
        link_dir=args.link_dir,
        map=args.map,
        gallery=not args.no_gallery,
    )
    job = run_job(
        dd, root, args.out, view=view, move_duplicates=args.move_duplicates, backbones=(nets, note), files=files
    )
    print(summary(job.result, job.out))
    if args.link_dir:
        print(f"linked {job.links} images into {args.link_dir}/cluster_with_N/cluster_i/")
    if job.moved is not None:
        n_ok = int((job.moved.status == "moved").sum())
        print(
            f"moved {n_ok} duplicates to {args.move_duplicates} ({len(job.moved) - n_ok} refused); "
            f"undo with: python -m dedup undo {Path(args.move_duplicates) / MANIFEST}"
        )
    return 0


def cmd_query(args) -> int:
    """`query IMAGE... --index OUT`: print and write the N nearest catalogue images."""
    import time

    from .query import Searcher
    from .report import QUERY_CSV, atomic_write

    searcher = Searcher(args.index, args.weights_dir)
    t = time.perf_counter()
    res = searcher.query(args.images, n=args.n)
    secs = time.perf_counter() - t
    for path, reason in searcher.skipped:
        print(f"skipped query {path}: {reason}", file=sys.stderr)
    csv = Path(args.csv) if args.csv else Path(args.index) / QUERY_CSV
    atomic_write(csv, lambda p: res.to_csv(p, index=False))
    for query, rows in res.groupby("query", sort=False):
        how = f"ranked in the {searcher.space} space"
        if rows.confidence.notna().any():  # a catalogue file: its own neighbour list comes first
            how = f"itself, its neighbours by the run's pair confidence, the rest in the {searcher.space} space"
        print(f"{query}  ({searcher.similarity} similarity, {how})")
        for r in rows.itertuples():
            p = f"  p {r.confidence:.3f}" if r.confidence == r.confidence else ""  # NaN: not in its list
            print(f"  {r.rank:3d}. {r.distance:.4f}  {r.path}  [{r.group}]{p}")
    print(f"{len(args.images) - len(searcher.skipped)} queries in {secs:.2f} s; results: {csv}")
    return 1 if searcher.skipped else 0


def cmd_undo(args) -> int:
    """`undo MANIFEST`: put moved files back; 1 if any file could not be restored."""
    from .actions import undo

    res = undo(args.manifest)
    for r in res.itertuples():
        if r.status not in ("restored", "already in place"):
            print(f"{r.status}: {r.original}")
    for status, n in res.status.value_counts().items():
        print(f"{status}: {n}")
    return 0 if not res.status.str.startswith(("refused", "failed")).any() else 1


def cmd_bench(args) -> int:
    """`bench LABELS.csv`: run on a labelled set and write bench.json / bench.md / sweep.png."""
    from .evaluate import run_bench
    from .report import BENCH_JSON, BENCH_MD

    labels = Path(args.labels)
    if not labels.is_file():
        print(f"dedup: error: no such labels file: {labels}", file=sys.stderr)
        return 1
    from .job import check_outside

    check_outside(labels.parent, out=args.out, cache=args.cache)
    dd = _make(args)
    nets, note = dd.check()
    print(("NOTE: " if "FELL BACK" in note else "") + note, flush=True)
    data = run_bench(labels, dd, args.out, backbones=(nets, note))
    pw = data["pairwise"]
    print(
        f"{data['dataset']}: {data['images']} images, {data['true_groups']} true groups, "
        f"{data['predicted_groups']} predicted; pairwise P {pw['precision']:.3f} R {pw['recall']:.3f} "
        f"F1 {pw['f1']:.3f}; B-cubed F1 {data['bcubed']['f1']:.3f}; N-S {data['ns_score']:.3f}; "
        f"R@1 {data['recall_at_1']} (fused kNN {data['recall_at_1_fused']}); "
        f"calibration error {data['calibration_ece']}"
    )
    if "copies_found_by_edit" in data:
        print("copies found: " + ", ".join(f"{k} {v['share']:.2f}" for k, v in data["copies_found_by_edit"].items()))
    if "recall_by_view" in data:
        shown = [(k, v) for k, v in data["recall_by_view"].items() if v["recall"] is not None][:6]
        print("recall by views: " + ", ".join(f"{k} {v['recall']:.2f}" for k, v in shown))
    print(f"report: {Path(args.out) / BENCH_MD}, {Path(args.out) / BENCH_JSON}")
    return 0


def cmd_fit(args) -> int:
    """`fit LABELS.csv --out MODEL` (or `fit DIR --self-supervised`): write an adapted model."""
    from .adapt import check_model_folder
    from .fit import fit_self_supervised, fit_supervised
    from .job import check_outside

    source = Path(args.source)
    if args.self_supervised and not source.is_dir():
        raise NotADirectoryError(f"{source}: not a folder (--self-supervised fits on a folder of images)")
    if not args.self_supervised and not source.is_file():
        raise FileNotFoundError(f"{source}: no such labels file")
    check_outside(source if args.self_supervised else Path(args.root or source.parent), out=args.out, cache=args.cache)
    check_model_folder(args.out)
    cache = False if args.no_cache else (args.cache or str(Path(args.out) / "cache.sqlite"))
    dd = P.Deduplicator(
        backbones=args.backbones,
        verify=not args.no_verify,
        batch_size=args.batch_size,
        workers=args.workers,
        cache=cache,
        weights_dir=args.weights_dir,
        progress=not args.quiet,
        runtime=args.runtime,
    )
    if args.self_supervised:
        model = fit_self_supervised(args.source, args.out, dd, dim=args.dim, shrinkage=args.shrinkage, views=args.views)
    else:
        model = fit_supervised(
            args.source, args.out, dd, root=args.root, dim=args.dim, shrinkage=args.shrinkage, n_folds=args.folds
        )
    i = model.info
    what = f"{i['images']} images of {i['groups']} products" if i["mode"] == "supervised" else f"{i['images']} images"
    print(
        f"fitted a {i['mode']} model on {what} ({i['matching_pairs']} matching pairs, "
        f"{i['skipped']} files skipped) in {i['seconds']} s; pair model: "
        f"{'refitted' if model.pair_model is not None else 'shipped'}"
    )
    print(f"model: {args.out}; use it with: python -m dedup run DIR --model {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    """`evaluate GROUPS.csv LABELS.csv`: print the metrics of an existing run."""
    import json

    from .evaluate import evaluate, read_labels

    m = evaluate(read_labels(args.groups), read_labels(args.labels))
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    pw, b3 = m["pairwise"], m["bcubed"]
    print(
        f"images {m['images']} (missing {m['missing']}), true groups {m['true_groups']}, "
        f"predicted groups {m['predicted_groups']}"
    )
    print(f"pairwise  P {pw['precision']:.4f}  R {pw['recall']:.4f}  F1 {pw['f1']:.4f}")
    print(f"B-cubed   P {b3['precision']:.4f}  R {b3['recall']:.4f}  F1 {b3['f1']:.4f}")
    print(f"ARI {m['ari']:.4f}")
    return 0


def cmd_weights(args) -> int:
    """`weights [import DIR]`: list weights files and their status, or import verified ones."""
    from .backbones.weights import KERAS_WEIGHTS, import_weights, weights_status

    if args.action == "import":
        if not args.src:
            print("dedup: error: `weights import` needs a folder", file=sys.stderr)
            return 2
        for name, outcome in import_weights(args.src):
            print(f"{name}: {outcome}")
        return 0
    for spec in KERAS_WEIGHTS.values():
        st = weights_status(spec, args.weights_dir)
        print(f"{spec.backbone:12s} {st.status:10s} {spec.filename}  md5 {spec.md5}")
        print(f"{'':12s} looked in: {', '.join(str(d) for d in st.searched)}")
        if st.path:
            print(f"{'':12s} found: {st.path} (md5 {st.md5})")
    from .backbones import EfficientNetLite0, WeightsError

    try:
        b = EfficientNetLite0()
        b.check_weights()
        print(f"{'efficientnet-lite0':12s} verified   {b.weights_id}  ({b.weights_source})")
    except WeightsError as exc:
        print(f"{'efficientnet-lite0':12s} missing    {exc}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    quiet = getattr(args, "quiet", False)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else (logging.ERROR if quiet else logging.WARNING),
        format="%(levelname)s %(name)s: %(message)s",
    )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import sqlite3

    from .backbones import WeightsError
    from .cache import CacheError
    from .lock import BusyError

    commands = {
        "run": cmd_run,
        "weights": cmd_weights,
        "query": cmd_query,
        "undo": cmd_undo,
        "bench": cmd_bench,
        "fit": cmd_fit,
        "evaluate": cmd_evaluate,
    }
    try:
        return commands[args.command](args)
    except (WeightsError, CacheError, BusyError, ValueError) as exc:
        print(f"dedup: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into e.g. `head`: stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # the run's own files: disk full, read-only, permissions, missing
        where = f"{os.fsdecode(exc.filename)}: " if exc.filename else ""
        print(f"dedup: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:  # the cache failed mid-run (disk full, I/O error)
        cache = getattr(args, "cache", None) or Path(getattr(args, "out", ".")) / "cache.sqlite"
        print(f"dedup: error: cache {cache}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("dedup: interrupted; finished batches are in the cache, run again to resume", file=sys.stderr)
        return 130
