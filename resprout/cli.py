"""The ``resprout`` command.

::

    resprout train [CONFIG.toml|.yaml] [key=value ...] [--out DIR] [--json]
    resprout resume DIR [device=... threads=... progress=... lr=... momentum=... (optimizer keys)] [--json]
    resprout runs [--json]
    resprout report DIR [DIR...] [--out DIR]
    resprout profile model=NAME [key=value ...] [--json]
    resprout slim DIR --out FILE [--force] [--bn reestimate|copy] [--json]
    resprout keys
    resprout compare method=A,B,... seeds=0,1,2 [key=value ...] --out DIR [--json]
    resprout analyze DIR [baseline=DIR] [--out DIR] [--json]

A mistake in a key, value, path or file prints one line on stderr and exits with code 2; a diverged run exits
with 3, an interrupted one with 130 (its checkpoint is saved: ``resprout resume DIR`` continues it).
"""

from __future__ import annotations

import argparse
import errno
import gc
import json
import os
import signal
import sys
import threading
from pathlib import Path

from resprout.errors import ConfigError, Interrupted, ResproutError


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit code 2), like every other user error: main prints it
    after its own ``resprout: error:`` prefix, so only a subcommand's name is added here."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.partition(" ")[2]
        raise ConfigError(f"{command}: {message}" if command else message)


def _split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    files = [a for a in args if "=" not in a]
    if len(files) > 1:
        raise ConfigError(f"expected at most one config file and key=value pairs, got {', '.join(files)}")
    return (files[0] if files else None), [a for a in args if "=" in a]


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _print_json(obj: dict) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _summary(result: dict) -> str:
    lines = [f"run {result['run_id'] or '(not saved)'}: {result['run_dir'] or ''}"]
    for member, m in result["final"].items():
        best = result["best"].get(member, {})
        text = f"  {member}: final test top1 {100 * m['top1']:.2f}" + \
            "".join(f"  {k} {100 * m[k]:.2f}" for k in ("top5", "nmi", "rank5", "map") if k in m)
        if best:
            text += (f"  | best {best['selected_on']} top1 {100 * best['top1']:.2f} "
                     f"(generation {best['generation']}, epoch {best['epoch']})")
        lines.append(text)
        slim = _slim_summary(result, member)
        if slim:
            lines.append(slim)
    return "\n".join(lines)


# the slim network's accuracies a Knowledge Evolution (kels) run records per generation
_SLIM_METRICS = (("slim_top1", "BN copied"), ("slim_bnfix_top1", "BN re-estimated"))


def _slim_summary(result: dict, member: str) -> str | None:
    """The last generation's slim fit hypothesis accuracy of ``member`` (KE runs), as one line."""
    gens = result.get("generations") or []
    last = gens[-1].get(member, {}) if gens else {}
    parts = [f"{100 * last[k]:.2f} ({how})" for k, how in _SLIM_METRICS if k in last]
    if not parts:
        return None
    return f"  {member}: slim network (generation {len(gens)}) test top1 " + ", ".join(parts)


def _report_result(result: dict, as_json: bool) -> int:
    if _is_main_process():  # under torchrun every process ran the command; rank 0 reports
        _print_json(result) if as_json else print(_summary(result))
    return 0


# -- commands ------------------------------------------------------------------------------------------------------------
def cmd_train(ns: argparse.Namespace) -> int:
    from resprout.config import load_config
    from resprout.run import train

    path, overrides = _split_config_args(ns.args)
    cfg = load_config(path, overrides)
    result = train(cfg, out=ns.out, store=ns.store, progress="none" if ns.quiet else cfg.progress)
    return _report_result(result, ns.json)


def cmd_resume(ns: argparse.Namespace) -> int:
    from resprout.config import parse_overrides
    from resprout.run import resume

    runtime = parse_overrides(ns.overrides)
    progress = runtime.pop("progress", None)  # progress=none and --quiet both work (and together)
    result = resume(ns.run_dir, progress="none" if ns.quiet else progress, module=ns.module, **runtime)
    return _report_result(result, ns.json)


def cmd_runs(ns: argparse.Namespace) -> int:
    from resprout.analysis.report import list_runs
    from resprout.analysis.tables import format_table

    headers, rows, records = list_runs(ns.store)
    _mark_stopped(headers, rows, records)
    if ns.json:
        _print_json({"runs": records})
    elif not rows:
        print("no runs yet")
    else:
        print(format_table(headers, rows))
    return 0


def _mark_stopped(headers: list[str], rows: list[list], records: list[dict]) -> None:
    """A run the store calls ``running`` whose process is gone (its lock is missing, or names a dead pid on this
    machine) is shown as ``stopped``; the store itself is not changed."""
    from resprout.engine.rundir import holder_alive, lock_holder

    col = headers.index("status")
    for row, rec in zip(rows, records):
        if rec["status"] != "running" or not rec.get("run_dir"):
            continue
        if holder_alive(lock_holder(Path(rec["run_dir"]))) is False:
            rec["status"] = row[col] = "stopped"


REPORT_MANIFEST = ".resprout-report"
REPORT_FILES = ("report.md", "curves.png", "generations.png")


def _check_report_out(out: Path) -> set[str]:
    """Refuse an --out that is a file, or a directory holding report files that resprout did not write there."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report --out {out} is an existing file, not a directory; nothing was overwritten")
    if not out.is_dir():
        return set()
    mine = set()
    manifest = out / REPORT_MANIFEST
    if manifest.is_file():
        try:
            mine = set(json.loads(manifest.read_text()).get("files", []))
        except (json.JSONDecodeError, AttributeError):
            mine = set()
    foreign = [n for n in REPORT_FILES if (out / n).exists() and n not in mine]
    if foreign:
        raise ConfigError(f"report --out {out} holds {', '.join(foreign)} not written by resprout report; nothing "
                          f"was overwritten: choose another --out")
    return mine


def cmd_report(ns: argparse.Namespace) -> int:
    from resprout.analysis.report import write_report

    out = Path(ns.out) if ns.out else Path("report")
    mine = _check_report_out(out)
    text, files = write_report([Path(d) for d in ns.run_dirs], out)
    (out / REPORT_MANIFEST).write_text(json.dumps({"files": sorted(mine | {Path(f).name for f in files})}))
    print(text)
    for f in files:
        print(f"wrote {f}", file=sys.stderr)
    return 0


def cmd_profile(ns: argparse.Namespace) -> int:
    from resprout.analysis.cost import profile_command

    result, text = profile_command(ns.args)
    if ns.json:
        _print_json(result)
    else:
        print(text)
    return 0


def cmd_slim(ns: argparse.Namespace) -> int:
    from resprout.analysis.slim import export_slim
    from resprout.run import open_run

    from resprout.engine.rundir import is_own_file

    out = Path(ns.out)
    run_dir = Path(ns.run_dir)
    if run_dir.is_dir() and out.parent.resolve() == run_dir.resolve() and is_own_file(out.name):
        raise ConfigError(f"slim --out {out} is one of the run's own files; it is never overwritten: choose "
                          f"another --out")
    if out.exists() and (out.is_dir() or not ns.force):
        raise ConfigError(f"slim --out {out} already exists; nothing was overwritten"
                          + ("" if out.is_dir() else " (add --force to replace it)"))
    meta = export_slim(open_run(ns.run_dir, device="cpu", module=ns.module), ns.out, bn=ns.bn, source=ns.run_dir)
    if ns.json:
        _print_json({**meta, "out": str(ns.out)})
    else:
        print(f"wrote {ns.out}: {meta['params']:,} parameters ({meta['dense_params']:,} dense), {meta['macs']:,} MACs "
              f"({meta['dense_macs']:,} dense), test top1 {100 * meta['test_top1']:.2f} "
              f"(dense {100 * meta['dense_test_top1']:.2f})\n"
              f"load it with: torch.export.load(open({str(ns.out)!r}, 'rb')).module()  (input: float images in [0, 1])")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from resprout.compare import compare, exit_code

    result = compare(ns.args, ns.out)
    _print_json(result) if ns.json else print(result["table"])
    return exit_code(result)


def cmd_analyze(ns: argparse.Namespace) -> int:
    """``resprout analyze DIR [baseline=DIR] [--out DIR] [--json]``: the grafting paper's filter analyses."""
    from resprout.analysis.filters import FILES, analyze

    baseline = None
    for a in ns.args:
        key, sep, value = a.partition("=")
        if key != "baseline" or not sep or not value:
            raise ConfigError(f"analyze: unknown argument {a!r}; allowed: baseline=DIR")
        baseline = value
    out_dir = Path(ns.out) if ns.out else Path(ns.run_dir) / "analysis"
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"analyze --out {out_dir} is an existing file, not a directory")
    text, result = analyze(ns.run_dir, baseline, out_dir)
    if ns.json:
        print(json.dumps({**result, "out": str(out_dir)}, indent=2, sort_keys=True, default=str))
    else:
        print(text)
        print(f"wrote {', '.join(str(out_dir / f) for f in FILES)}", file=sys.stderr)
    return 0


def cmd_keys(ns: argparse.Namespace) -> int:
    from resprout.describe import render

    print(render())
    return 0


_MODULE_HELP = ("the class or function that builds the run's custom model (a run made in Python with module=); "
                "needed only when the run could not record an importable one")


def build_parser() -> argparse.ArgumentParser:
    from resprout.describe import installed_methods

    p = _Parser(prog="resprout", description="Train small-data networks with methods that regrow their idle "
                f"capacity, and the baselines they are compared with. Methods here: {', '.join(installed_methods())} "
                "(`resprout keys` says what each is and takes).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p.commands = sub.choices  # the subcommands' own parsers, for `parse`

    t = sub.add_parser("train", help="train a run", description="Train a run. Keys: `resprout keys`.")
    t.add_argument("args", nargs="*", default=[], metavar="CONFIG|key=value")
    t.add_argument("--out", help="run directory (default: a new one under runs/)")
    t.add_argument("--store", help="results store (default: $RESPROUT_STORE or runs/resprout.db)")
    t.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("resume", help="continue a run from its checkpoint")
    r.add_argument("run_dir")
    r.add_argument("overrides", nargs="*", default=[], metavar="device=|threads=|progress=|lr=|momentum=|...")
    r.add_argument("--json", action="store_true")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--module", metavar="PKG.MOD:FACTORY", help=_MODULE_HELP)
    r.set_defaults(fn=cmd_resume)

    ls = sub.add_parser("runs", help="list the runs in the results store")
    ls.add_argument("--store")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_runs)

    rep = sub.add_parser("report", help="compare runs: a table (mean +- std over seeds) and PNG curves")
    rep.add_argument("run_dirs", nargs="+", metavar="DIR")
    rep.add_argument("--out", help="where to write report.md and the plots (default: ./report)")
    rep.set_defaults(fn=cmd_report)

    pr = sub.add_parser("profile", help="parameters and multiply-accumulates of a model")
    pr.add_argument("args", nargs="+", metavar="key=value")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(fn=cmd_profile)

    sl = sub.add_parser("slim", help="write the slim fit hypothesis of a Knowledge Evolution (kels) run")
    sl.add_argument("run_dir")
    sl.add_argument("--out", required=True, help="file to write (a torch.export program)")
    sl.add_argument("--bn", choices=("reestimate", "copy"), default="reestimate",
                    help="re-estimate the slim network's BN statistics on training batches (default) or copy them")
    sl.add_argument("--force", action="store_true", help="replace an existing --out file (never the run's own)")
    sl.add_argument("--module", metavar="PKG.MOD:FACTORY", help=_MODULE_HELP)
    sl.add_argument("--json", action="store_true")
    sl.set_defaults(fn=cmd_slim)

    k = sub.add_parser("keys", help="list the configuration keys")
    k.set_defaults(fn=cmd_keys)

    an = sub.add_parser("analyze", help="filter analyses of a run: invalid filters, information, filter norms")
    an.add_argument("run_dir")
    an.add_argument("args", nargs="*", default=[], metavar="baseline=DIR")
    an.add_argument("--out", help="where to write filters.md and the plots (default: DIR/analysis)")
    an.add_argument("--json", action="store_true")
    an.set_defaults(fn=cmd_analyze)

    cmp = sub.add_parser("compare", help="run methods side by side (same data, seeds, budget) and print the table",
                         description="Run every method x seed (reusing finished runs) and print the comparison "
                         "table. Keys: method=A,B seeds=0,1,2 budget=equal|per-method jobs=N baseline=ce|none, plus "
                         "any `resprout keys` key shared by every run.")
    cmp.add_argument("args", nargs="+", metavar="key=value")
    cmp.add_argument("--out", required=True, help="directory of the comparison (runs, store, table, plot)")
    cmp.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    cmp.set_defaults(fn=cmd_compare)
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """The command's arguments, with keys, files and flags in any order (``train data=digits --out d threads=1``):
    argparse's intermixed parsing, which it supports on a subcommand's own parser but not across subparsers, so
    the subcommand is looked up first. Anything else (no command, an unknown one, ``--help``) goes to ``parser``."""
    commands = getattr(parser, "commands", {})
    if argv and argv[0] in commands:
        ns = commands[argv[0]].parse_intermixed_args(argv[1:])
        ns.command = argv[0]
        return ns
    return parser.parse_args(argv)


def _on_early_sigterm(signum, frame) -> None:
    raise Interrupted("interrupted during start-up; nothing was saved since the last checkpoint (a new run saved "
                      "nothing): run the command again")


def _os_error(e: OSError) -> str:
    where = e.filename if e.filename is not None else "a file"
    if e.errno == errno.ENOSPC:
        return f"no space left on {where}"
    if isinstance(e, IsADirectoryError):
        return f"{where} is a folder where a file is expected"
    if isinstance(e, NotADirectoryError):
        return f"{where}: a file stands where a folder is expected"
    return f"cannot use {where}: {e.strerror or type(e).__name__}"


def main(argv: list[str] | None = None) -> int:
    previous = None
    if threading.current_thread() is threading.main_thread():  # the trainer installs its own while it trains
        previous = signal.signal(signal.SIGTERM, _on_early_sigterm)
    try:
        ns = parse(build_parser(), sys.argv[1:] if argv is None else argv)
        code = ns.fn(ns)
        if argv is None and "torch" in sys.modules:
            # the process ends next: its final garbage collections walk every object torch and the run left (1-2 s
            # of the demo's exit, BENCHMARKS.md `startup`); everything resprout writes is closed by now
            gc.freeze()
        return code
    except ResproutError as e:
        # torchrun signals every process when one fails or the user stops the run: the cause is reported by the
        # failing rank, the interruption by rank 0, so the other ranks' "interrupted" is noise
        if _is_main_process() or not isinstance(e, Interrupted):
            print(f"resprout: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        if _is_main_process():
            print("resprout: aborted; nothing was saved after the last checkpoint, if any", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (e.g. `| head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a file or folder we could not create, read or write: name it, no traceback
        print(f"resprout: error: {_os_error(e)}", file=sys.stderr)
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
