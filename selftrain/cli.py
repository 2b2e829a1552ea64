"""`selftrain <stage>`: each stage of selftrain.stages as a command, plus `check-data`, `gallery`, `summary`, `lineage`,
`reproduce`, `tag`, `teacher` and `plan`.

Arguments are generated from the stage functions' keyword-only parameters, so the CLI,
DVC's commands and the Prefect tasks cannot drift apart.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
from typing import Any

from selftrain import artifacts, failures, gate, promoted, teacher_tags
from selftrain.data.splits import check_data
from selftrain.layout import Generation
from selftrain.params import Params, ParamsError, load_params, parse_override
from selftrain.rendering import history_table
from selftrain.reproduce import ReproduceError, reproduce
from selftrain.stages import MODEL_FREE, STAGES

# Stages, models (timm), plans and lineage import torch and timm, several seconds here: each is imported where a
# command needs it, so `selftrain promote`, `summary` and `--help` start in a second or two.
ARG_HELP = {
    "out": "where the stage writes its output (local path or s3://...); written atomically",
    "data": "prepare's output: the labeled, unlabeled, val and test splits",
    "listing": "list-data's output: the input data's fingerprint; prepare refuses data that changed since",
    "teacher": "the teacher: a promotion record (the previous generation's promoted.json) or a model.safetensors",
    "logits_store": "infer's output: the logit store (the teacher's outputs on every unlabeled image)",
    "pseudo": "filter-balance's output: pseudo-labels and per-class counts",
    "student": "the student's model.safetensors",
    "metrics": "evaluate's metrics.json",
    "promoted": "a promotion record, promoted.json (train-teacher writes generation 0's)",
    "generation": "which entry of params.generations (gen1, gen2, ...)",
    "sets": "make-robustness-sets' output: the -C corruptions and -P sequences",
    "reference": "robustness-reference's output: the -A set and the reference model's -C/-P results that normalise CE "
    "and FR",
    "resume": "where the training loop keeps its resumable checkpoint (default: OUT.resume; removed when the stage "
    "finishes)",
    "part": "infer only, with params infer.parts > 1: infer this part (0..parts-1) only, not the whole store; "
    "on Kubernetes each pod of an Indexed Job runs one part",
    "previous_logits": "report only: the previous generation's logit store, to show which pseudo-labels changed "
    "(skipped when absent)",
    "dvc_lock": "dvc.lock, whose stage hashes the lineage record copies (what dvc.yaml passes; a flow has none)",
    "reference_model": "the fixed robustness reference: generation 0's promoted.json or a model.safetensors "
    "(params robustness.reference, when set, takes its place)",
}


def _params_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="the params file (default: %(default)s)")


def _override(text: str) -> tuple[str, Any]:
    try:
        return parse_override(text)
    except ParamsError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole CLI; given the `command` about to run, the stages' commands other than it are left bare, so that no
    other stage's module is imported (they take seconds: torch, timm)."""
    parser = argparse.ArgumentParser(
        prog="selftrain",
        description="Iterative self-training of image classifiers, one stage at a time. "
        "Stages read params.yaml and artifact URIs (local paths or s3://) and write their outputs atomically.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="<stage>")
    for name in STAGES:
        if command is not None and name != command:
            sub.add_parser(name)
            continue
        fn = STAGES[name]
        doc = inspect.getdoc(fn) or ""
        sp = sub.add_parser(name, help=doc.splitlines()[0], description=doc)
        _params_option(sp)
        sp.add_argument(
            "--set",
            dest="overrides",
            type=_override,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one param, e.g. --set student.epochs=2 (repeatable)",
        )
        sp.add_argument(
            "--result", metavar="URI", help="also write the stage's summary (what it prints) as JSON here (optional)"
        )
        for arg in inspect.signature(fn).parameters.values():
            if arg.kind is inspect.Parameter.KEYWORD_ONLY:
                flag = "--" + arg.name.replace("_", "-")
                metavar = {"generation": "NAME", "part": "N"}.get(arg.name, "URI")
                optional = arg.default is not inspect.Parameter.empty
                sp.add_argument(
                    flag,
                    dest=arg.name,
                    required=not optional,
                    type=int if arg.name == "part" else str,
                    default=arg.default if optional else None,
                    metavar=metavar,
                    help=ARG_HELP[arg.name] + (" (optional)" if optional else ""),
                )
    ga = sub.add_parser(
        "gallery",
        help="render the pseudo-label gallery of a generation under a root (what report writes as gallery.png): "
        "unlabeled images per class by the teacher's confidence, kept / dropped / duplicated, changed labels, "
        "confident mistakes",
    )
    _params_option(ga)
    ga.add_argument("--root", default="artifacts", help="the artifact root (default: %(default)s)")
    ga.add_argument("--generation", required=True, metavar="GEN", help="gen1, gen2, ...")
    ga.add_argument("--out", default="gallery.png", help="the PNG to write (default: %(default)s)")
    cd = sub.add_parser(
        "check-data",
        help="check the whole input tree (data.folders) and list every bad file and folder with the reason; exit 2 if "
        "any, 0 if none",
        description="Reads every image of data.folders as prepare would, writes nothing, and lists every problem at "
        "once: "
        "unreadable, truncated, zero-byte or non-image files, files that are not regular files or are over "
        "data.max_file_mb, "
        "images too large to decode safely, images outside class folders, empty class folders, val/test classes the "
        "labeled set lacks, missing or overlapping folders, training images byte-identical to a val/test/holdout "
        "image, "
        "unusable splits; hidden folders are listed as left out. prepare runs the same check before it writes "
        "anything; "
        "data.skip_bad: true makes it leave the bad files out instead.",
    )
    _params_option(cd)
    cd.add_argument(
        "--set",
        dest="overrides",
        type=_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one param (repeatable)",
    )
    sm = sub.add_parser(
        "summary",
        help="print the per-generation table of the last generation run under a root; exit 0 when the chain "
        "ran to its end or a gate stopped it, 1 when a generation did not finish",
    )
    _params_option(sm)
    sm.add_argument("--root", default="artifacts", help="the artifact root (default: %(default)s)")
    sm.add_argument(
        "--until", metavar="GEN", help="the last generation that was meant to run (default: the last in params)"
    )
    ln = sub.add_parser(
        "lineage",
        help="print the chain of generations that made a model, back to the labeled data: "
        "each model, teacher, data, logits and pseudo-labels by content hash, its accuracy and git commit",
    )
    _params_option(ln)
    ln.add_argument("--root", default="artifacts", help="the artifact root (default: %(default)s)")
    ln.add_argument(
        "--generation", metavar="GEN", help="start from this generation (default: the last one with a lineage.json)"
    )
    ln.add_argument(
        "--png", metavar="PATH", help="also draw the chain as a picture into this PNG file (local path or s3://)"
    )
    rp = sub.add_parser(
        "reproduce",
        help="rebuild a past generation from its recorded commit (inputs through DVC) and compare "
        "logits, pseudo-labels, model and metrics with the record; exit 0 on a match, 1 otherwise",
    )
    rp.add_argument(
        "target",
        metavar="GEN|SHA256",
        help="a generation (gen1, ...) at --rev, or its model's sha256 (8+ hex digits, as `selftrain lineage` prints "
        "it): the newest commit that recorded it",
    )
    rp.add_argument(
        "--rev",
        default="HEAD",
        help="the git rev to find the generation at, or to search back from (default: %(default)s)",
    )
    rp.add_argument("--repo", default=".", help="the git + DVC repository (default: the current directory)")
    rp.add_argument(
        "--workdir", metavar="DIR", help="where to rebuild (default: a new temporary directory, kept for inspection)"
    )
    rp.add_argument(
        "--tolerance",
        type=float,
        metavar="X",
        help="absolute tolerance on metrics (default: 0 on CPU, 0.01 where CUDA ran or runs, whose kernels are not "
        "bitwise deterministic)",
    )
    tg = sub.add_parser(
        "tag",
        help="give each committed, promoted model a git tag teacher@vK.N.0 (K: its generation) whose message "
        "names generation, method, model, metrics and checkpoint, so the current teacher can be fetched by name",
    )
    _params_option(tg)
    tg.add_argument("--repo", default=".", help="the git + DVC repository (default: the current directory)")
    tg.add_argument("--push", metavar="REMOTE", help="also push the new tags to this git remote")
    tc = sub.add_parser(
        "teacher",
        help="print the current teacher (the newest teacher@v* tag): generation, model, checkpoint path and sha256, "
        "and the `dvc get` command that fetches it",
    )
    tc.add_argument("--repo", default=".", help="the git + DVC repository (default: the current directory)")
    pl = sub.add_parser(
        "plan",
        help="size a node pool: per GPU stage of params.yaml, the image passes, GPU-hours and wall time "
        "on N nodes, from measured throughputs (bench/throughput.py --out) or a quick probe here",
    )
    _params_option(pl)
    pl.add_argument(
        "--throughput",
        metavar="FILE",
        help="throughputs per model, measured on the pool's GPU type (bench/throughput.py --out FILE); default: probe "
        "each model on this node",
    )
    pl.add_argument("--nodes", type=int, default=1, help="GPU nodes in the pool (default: %(default)s)")
    pl.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node (default: %(default)s)")
    pl.add_argument("--classes", type=int, help="class count, for data.source: folders")
    return parser


def show_lineage(params: Params, root: str, generation: str | None = None, png: str | None = None) -> str:
    """The chain table from `generation` (default: the last with a lineage record under `root`) back to the data."""
    if generation is None:
        found = [g for g in params.generations if artifacts.exists(Generation(root, g).lineage)]
        if not found:
            raise artifacts.ArtifactError(
                f"no generation under '{root}' has a lineage.json: run the pipeline (dvc repro) first"
            )
        generation = found[-1]
    from selftrain import lineage

    records = lineage.chain(root, generation)
    if png:
        artifacts.write_bytes(png, lineage.chain_png(records))
    return lineage.chain_table(records)


def summary(params: Params, root: str, until: str | None = None) -> tuple[str, bool]:
    """The history table of the last generation (in params order, up to `until`) that finished under `root`, and
    whether the chain ran to its end: every generation finished (promotion record and report), or a gate stopped it."""
    names = list(params.generations)
    if until is not None:
        if until not in names:
            raise ParamsError(f"--until {until}: not one of params.generations {names}")
        names = names[: names.index(until) + 1]
    last, unfinished = None, None
    for name in names:
        gen = Generation(root, name)
        if not (artifacts.exists(gen.promoted) and artifacts.exists(artifacts.join(gen.report, "report.md"))):
            unfinished = name
            break
        last = promoted.read_record(gen.promoted)
        if not last["passed"]:
            break
    if last is None:
        raise artifacts.ArtifactError(
            f"no generation has finished under '{root}' (no {Generation(root, 'gen1').promoted})"
        )
    table = history_table(last)
    if unfinished:
        table += (
            f"\n\n{unfinished} did not finish (no promotion record or report under '{root}'): the run failed "
            "before it, see the error above."
        )
    return table, unfinished is None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv[0] if argv and not argv[0].startswith("-") else None).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        if args.command == "lineage":
            print(show_lineage(load_params(args.params), args.root, args.generation, args.png))
            return 0
        if args.command == "plan":
            from selftrain import plan as capacity

            params = load_params(args.params)
            if args.nodes < 1 or args.gpus_per_node < 1:
                raise ValueError("--nodes and --gpus-per-node must be at least 1")
            rates = (
                capacity.load_throughput(args.throughput)
                if args.throughput
                else capacity.probe({params.teacher.model, *(g.model for g in params.generations.values())}, params)
            )
            print(
                capacity.table(
                    capacity.plan(params, rates, args.nodes, args.gpus_per_node, args.classes),
                    rates,
                    args.nodes,
                    args.gpus_per_node,
                )
            )
            return 0
        if args.command == "tag":
            made = teacher_tags.tag_promotions(args.repo, list(load_params(args.params).generations), args.push)
            print(
                "\n".join(
                    f"{v.tag}: {v.record['generation']} {v.record['model']} {v.path} ({v.record['sha256'][:12]})"
                    for v in made
                )
                or "no new promotion to tag"
            )
            return 0
        if args.command == "teacher":
            v = teacher_tags.current(args.repo)
            print(
                f"{v.tag}: {v.record.get('generation')} ({v.record.get('method')}, {v.record.get('model')}), sha256 "
                f"{v.record.get('sha256')}\n"
                f"dvc get {args.repo} {v.path} --rev {v.tag}"
            )
            return 0
        if args.command == "reproduce":
            outcome = reproduce(args.target, args.repo, args.rev, args.workdir, args.tolerance)
            print(outcome.table())
            return 0 if outcome.matched else 1
        if args.command == "summary":
            table, finished = summary(load_params(args.params), args.root, args.until)
            print(table)
            return 0 if finished else 1
        if args.command == "gallery":
            from selftrain.stages.report import pseudo_label_gallery

            params = load_params(args.params)
            g = Generation(args.root, args.generation)
            previous = (
                Generation(args.root, params.generations[args.generation].teacher).logits
                if args.generation in params.generations
                else None
            )
            png, counted = pseudo_label_gallery(params, args.generation, g.data, g.logits, g.pseudo, previous)
            artifacts.write_bytes(args.out, png)
            print(json.dumps(counted, indent=1))
            return 0
        if args.command == "check-data":
            params = load_params(args.params, dict(args.overrides))
            problems = check_data(params.data, params.seed)
            for p in problems:
                print(p)
            errors = [p for p in problems if not p.ignored]
            source = params.data.folders.model_dump() if params.data.folders else params.data.source
            print(f"{len(errors)} problem(s) in {source}" if errors else f"no problems in {source}", file=sys.stderr)
            return failures.EXIT_BAD_INPUT if errors else 0
        params = load_params(args.params, dict(args.overrides))
        if args.command not in MODEL_FREE:
            from selftrain import models

            models.check_params(params, args.params)
        fn = STAGES[args.command]
        kwargs = {
            k: getattr(args, k)
            for k, a in inspect.signature(fn).parameters.items()
            if a.kind is inspect.Parameter.KEYWORD_ONLY
        }
        try:
            result = fn(params, **kwargs)
        finally:
            if "selftrain.distributed" in sys.modules:  # a stage that never imported it joined no process group
                sys.modules["selftrain.distributed"].close()
        if args.result:
            artifacts.write_json(args.result, result)
    except gate.GateError as e:
        print(f"selftrain {args.command}: stopped: {e}", file=sys.stderr)
        return failures.EXIT_GATE
    except (ParamsError, ValueError, artifacts.ArtifactError, ReproduceError, teacher_tags.TagError) as e:
        print(f"selftrain {args.command}: error: {e}", file=sys.stderr)
        return failures.EXIT_BAD_INPUT
    except Exception as e:
        if not failures.is_transient(e):
            raise  # a bug: Python's traceback and exit status 1
        logging.getLogger("selftrain").warning("transient I/O error", exc_info=True)
        print(
            f"selftrain {args.command}: transient I/O error, worth another try: {type(e).__name__}: {e}",
            file=sys.stderr,
        )
        return failures.EXIT_TRANSIENT
    print(result.pop("table") if args.command == "report" else json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
