"""The data expectation suite: a per-image table, Great Expectations rules over it, JSON/Markdown/HTML reports.

Rules (each failure names the files that break it):
``not_empty``, ``readable``, ``min_side`` (on HR for pairs), ``channels``, ``bit_depth``, ``unique_sha256``,
``not_constant``, and for pairs ``pairs_matched`` (hr/NAME <-> lr/NAME one to one), ``pair_width_sf`` /
``pair_height_sf`` (HR = sf x LR exactly), ``pair_bit_depth`` (16-bit HR gives 16-bit LR).
Great Expectations runs in an ephemeral (in-memory) context; it is imported only when a suite runs.

Reports go to a folder the caller names, or by default to ``reports/validate-data/PATH`` under the current
directory, where PATH is the validated folder's path relative to the current directory (its absolute path without
the leading '/' when it lies elsewhere): ``data/hr/train`` reports to ``reports/validate-data/data/hr/train``. A
report folder is never inside the validated folder: validation only reads its input.
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd

from difiisr.data.pairs import side_images
from difiisr.errors import DifiisrError, ExitCode
from difiisr.io import DEFAULT_MAX_PIXELS, ImageReadError, list_images, read_image
from difiisr.storage import atomic_write_text, remove_stale_temp_files

logger = logging.getLogger(__name__)

#: Default report location, relative to the current directory: ``REPORTS_ROOT/PATH`` (see the module docstring).
REPORTS_ROOT = Path("reports") / "validate-data"
TABLE_COLUMNS = (
    "path",
    "readable",
    "error",
    "width",
    "height",
    "channels",
    "bit_depth",
    "is_grey",
    "mean",
    "std",
    "sha256",
)
_INT_COLUMNS = ("width", "height", "channels", "bit_depth")


class DataValidationError(DifiisrError, RuntimeError):
    """The suite itself could not run (not a data failure): the message names the rule and the cause."""

    exit_code = ExitCode.JOB_FAILED


class ReportLocationError(DifiisrError, ValueError):
    """The report folder would be inside the validated folder; the message names both and the flag to use."""


@dataclass(frozen=True)
class ValidationConfig:
    """Thresholds of the suite: ``min_side`` in pixels (the training crop), allowed sets, scale factor ``sf``."""

    min_side: int = 256
    allowed_channels: tuple[int, ...] = (1, 3)
    allowed_bit_depths: tuple[int, ...] = (8, 16)
    sf: int = 4
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.min_side < 1:
            raise ValueError(f"ValidationConfig.min_side must be >= 1, got {self.min_side}")
        if self.sf < 1:
            raise ValueError(f"ValidationConfig.sf must be >= 1, got {self.sf}")


class Failure(NamedTuple):
    """One failed rule and the files that break it."""

    rule: str
    files: tuple[str, ...]


@dataclass(frozen=True)
class RuleOutcome:
    """One rule's outcome: ``files`` that break it (empty when it passes)."""

    rule: str
    description: str
    success: bool
    files: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ValidationResult:
    """Outcome of a suite run: ``success``, ``failures`` as ``(rule, files)``, the per-image ``table``
    (plus the joined ``pairs`` table in pairs mode) and every rule's outcome."""

    success: bool
    failures: list[Failure]
    table: pd.DataFrame
    rules: list[RuleOutcome]
    folder: Path
    mode: Literal["images", "pairs"]
    config: ValidationConfig
    pairs: pd.DataFrame | None = field(default=None)

    def summary(self, max_files: int = 10) -> str:
        """Human summary: one status line, then one line per failing rule naming up to ``max_files`` files."""
        n = len(self.table)
        what = f"{n} image(s)" + (f" in {len(self.pairs)} pair name(s)" if self.pairs is not None else "")
        if self.success:
            return f"PASS: all {len(self.rules)} rules hold for {what} in {self.folder}"
        lines = [f"FAIL: {len(self.failures)} of {len(self.rules)} rules broken for {what} in {self.folder}"]
        by_rule = {r.rule: r for r in self.rules}
        for failure in self.failures:
            shown = ", ".join(failure.files[:max_files])
            more = f" (+{len(failure.files) - max_files} more)" if len(failure.files) > max_files else ""
            lines.append(f"  {failure.rule} [{by_rule[failure.rule].description}]: {shown}{more}")
        unreadable = self.table[~self.table["readable"]]
        for path, reason in list(zip(unreadable["path"], unreadable["error"], strict=True))[:max_files]:
            lines.append(f"    {path}: {reason}")
        if len(unreadable) > max_files:
            lines.append(f"    (+{len(unreadable) - max_files} more unreadable files, see the report)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ table


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def _row(path: Path, max_pixels: int) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(TABLE_COLUMNS)
    row.update(path=str(path), readable=False, sha256=_sha256(path))
    try:
        img = read_image(path, max_pixels=max_pixels)
    except ImageReadError as exc:
        row["error"] = exc.reason
        return row
    px = img.pixels
    row.update(
        readable=True,
        width=img.width,
        height=img.height,
        channels=img.channels,
        bit_depth=img.bit_depth,
        is_grey=img.is_grey,
        mean=float(np.mean(px, dtype=np.float64)),
        std=float(np.std(px, dtype=np.float64)),
    )
    return row


def build_image_table(
    paths: Iterable[str | os.PathLike[str]], *, max_pixels: int = DEFAULT_MAX_PIXELS, progress: bool = False
) -> pd.DataFrame:
    """One row per file: path, readable, error, width, height, channels, bit_depth, is_grey, mean, std, sha256.

    ``mean``/``std`` are in pixel units (0..255 or 0..65535); unreadable files get ``readable=False`` and the
    reason in ``error`` (size/stat columns empty).
    """
    from tqdm.auto import tqdm

    items = [Path(p) for p in paths]
    rows = [
        _row(p, max_pixels) for p in tqdm(items, desc="scan", unit="img", disable=not progress, leave=False)
    ]
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    for col in _INT_COLUMNS:
        table[col] = pd.array(table[col].tolist(), dtype="Int64")
    table["readable"] = table["readable"].astype(bool)
    table["is_grey"] = table["is_grey"].astype("boolean")
    table["mean"] = table["mean"].astype(float)
    table["std"] = table["std"].astype(float)
    return table


def build_pair_table(hr: pd.DataFrame, lr: pd.DataFrame, sf: int) -> pd.DataFrame:
    """Full outer join of HR and LR image tables on file name, with ``matched`` and the sf x LR size columns."""

    def side(table: pd.DataFrame, prefix: str) -> pd.DataFrame:
        cols = {c: f"{prefix}_{c}" for c in ("path", "width", "height", "bit_depth", "sha256")}
        out = table[list(cols)].rename(columns=cols)
        out.insert(0, "name", [Path(p).name for p in table["path"]])
        return out

    pairs = side(hr, "hr").merge(side(lr, "lr"), on="name", how="outer", sort=True)
    pairs["matched"] = pairs["hr_path"].notna() & pairs["lr_path"].notna()
    pairs["hr_min_side"] = pd.array(
        [
            min(w, h) if pd.notna(w) and pd.notna(h) else pd.NA
            for w, h in zip(pairs["hr_width"], pairs["hr_height"], strict=True)
        ],
        dtype="Int64",
    )
    pairs["pair_sha256"] = [
        f"{hr_sha}:{lr_sha}" if isinstance(hr_sha, str) and isinstance(lr_sha, str) else None
        for hr_sha, lr_sha in zip(pairs["hr_sha256"], pairs["lr_sha256"], strict=True)
    ]
    pairs["sf_lr_width"] = pairs["lr_width"] * sf
    pairs["sf_lr_height"] = pairs["lr_height"] * sf
    return pairs.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ suite


@dataclass(frozen=True)
class _Rule:
    name: str
    description: str
    expectation: Any  # a great_expectations Expectation
    file_columns: tuple[str, ...]  # columns that hold the files to name for a failing row


def _image_rules(cfg: ValidationConfig, with_min_side: bool, unique_files: bool = True) -> list[_Rule]:
    import great_expectations as gx

    e = gx.expectations
    rules = [
        _Rule(
            "not_empty",
            "the folder holds at least one image",
            e.ExpectTableRowCountToBeBetween(min_value=1),
            (),
        ),
        _Rule(
            "readable",
            "every file decodes as an image",
            e.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]),
            ("path",),
        ),
    ]
    if with_min_side:
        rules.append(
            _Rule(
                "min_side",
                f"min(width, height) >= {cfg.min_side} px (the training crop)",
                e.ExpectColumnValuesToBeBetween(column="min_side", min_value=cfg.min_side),
                ("path",),
            )
        )
    rules += [
        _Rule(
            "channels",
            f"channels in {sorted(cfg.allowed_channels)}",
            e.ExpectColumnValuesToBeInSet(column="channels", value_set=sorted(cfg.allowed_channels)),
            ("path",),
        ),
        _Rule(
            "bit_depth",
            f"bit depth in {sorted(cfg.allowed_bit_depths)}",
            e.ExpectColumnValuesToBeInSet(column="bit_depth", value_set=sorted(cfg.allowed_bit_depths)),
            ("path",),
        ),
    ]
    if unique_files:
        rules.append(
            _Rule(
                "unique_sha256",
                "no two files have identical content (sha256)",
                e.ExpectColumnValuesToBeUnique(column="sha256"),
                ("path",),
            )
        )
    rules += [
        _Rule(
            "not_constant",
            "pixel values are not all equal (std > 0)",
            e.ExpectColumnValuesToBeBetween(column="std", min_value=0, strict_min=True),
            ("path",),
        ),
    ]
    return rules


def _pair_rules(cfg: ValidationConfig) -> list[_Rule]:
    import great_expectations as gx

    e = gx.expectations
    both = ("hr_path", "lr_path")
    return [
        _Rule(
            "unique_pairs",
            "no two pairs are identical (same HR and same LR content); LR variants of one HR share it by design",
            e.ExpectColumnValuesToBeUnique(column="pair_sha256"),
            both,
        ),
        _Rule(
            "pairs_matched",
            "every hr/NAME has an lr/NAME and every lr/NAME an hr/NAME",
            e.ExpectColumnValuesToBeInSet(column="matched", value_set=[True]),
            both,
        ),
        _Rule(
            "min_side",
            f"HR min(width, height) >= {cfg.min_side} px (the training crop)",
            e.ExpectColumnValuesToBeBetween(column="hr_min_side", min_value=cfg.min_side),
            ("hr_path",),
        ),
        _Rule(
            "pair_width_sf",
            f"HR width = {cfg.sf} x LR width",
            e.ExpectColumnPairValuesToBeEqual(
                column_A="hr_width", column_B="sf_lr_width", ignore_row_if="either_value_is_missing"
            ),
            both,
        ),
        _Rule(
            "pair_height_sf",
            f"HR height = {cfg.sf} x LR height",
            e.ExpectColumnPairValuesToBeEqual(
                column_A="hr_height", column_B="sf_lr_height", ignore_row_if="either_value_is_missing"
            ),
            both,
        ),
        _Rule(
            "pair_bit_depth",
            "HR and LR have the same bit depth",
            e.ExpectColumnPairValuesToBeEqual(
                column_A="hr_bit_depth", column_B="lr_bit_depth", ignore_row_if="either_value_is_missing"
            ),
            both,
        ),
    ]


def _gx_context() -> Any:
    """An in-memory Great Expectations context with analytics and progress bars off."""
    # GX logs hundreds of INFO lines (docs registration, datasource loading) while importing and configuring
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars={"globally": False},
    )
    return gx.get_context(project_config=config, mode="ephemeral")


def _raised(exception_info: Any) -> str | None:
    """The message of an exception an expectation swallowed, if any."""
    if not isinstance(exception_info, dict):
        return None
    infos = exception_info.values() if "raised_exception" not in exception_info else [exception_info]
    for info in infos:
        if isinstance(info, dict) and info.get("raised_exception"):
            return str(info.get("exception_message"))
    return None


def _run_suite(context: Any, name: str, frame: pd.DataFrame, rules: Sequence[_Rule]) -> list[RuleOutcome]:
    """Run ``rules`` over ``frame`` as one ExpectationSuite/ValidationDefinition; map failing rows to files."""
    import great_expectations as gx

    asset = context.data_sources.add_pandas(f"{name}_source").add_dataframe_asset(f"{name}_table")
    batch = asset.add_batch_definition_whole_dataframe(f"{name}_all_rows")
    suite = context.suites.add(gx.ExpectationSuite(name=f"difiisr_{name}"))
    for rule in rules:
        rule.expectation.meta = {"rule": rule.name}
        suite.add_expectation(rule.expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=f"{name}_check", data=batch, suite=suite)
    )
    frame = frame.reset_index(drop=True)
    run = definition.run(batch_parameters={"dataframe": frame}, result_format="COMPLETE")
    by_rule = {r.expectation_config.meta["rule"]: r for r in run.results}
    outcomes = []
    for rule in rules:
        res = by_rule[rule.name]
        message = _raised(res.exception_info)
        if message is not None:
            raise DataValidationError(f"data suite {name!r}, rule {rule.name!r} could not run: {message}")
        files: list[str] = []
        for idx in res.result.get("unexpected_index_list") or []:
            for col in rule.file_columns:
                value = frame.at[idx, col]
                if isinstance(value, str) and value not in files:
                    files.append(value)
        outcomes.append(RuleOutcome(rule.name, rule.description, bool(res.success), tuple(files)))
    return outcomes


def _result(
    folder: Path,
    mode: Literal["images", "pairs"],
    cfg: ValidationConfig,
    table: pd.DataFrame,
    outcomes: list[RuleOutcome],
    pairs: pd.DataFrame | None = None,
) -> ValidationResult:
    failures = [Failure(o.rule, o.files or (str(folder),)) for o in outcomes if not o.success]
    result = ValidationResult(not failures, failures, table, outcomes, folder, mode, cfg, pairs)
    logger.info(
        "data validation of %s: %s", folder, "pass" if result.success else f"{len(failures)} rule(s) broken"
    )
    return result


def _with_min_side(table: pd.DataFrame) -> pd.DataFrame:
    out = table.copy()
    out["min_side"] = pd.array(
        [
            min(w, h) if pd.notna(w) and pd.notna(h) else pd.NA
            for w, h in zip(out["width"], out["height"], strict=True)
        ],
        dtype="Int64",
    )
    return out


def validate_images(
    folder: str | os.PathLike[str], cfg: ValidationConfig | None = None, *, progress: bool = False
) -> ValidationResult:
    """Run the image suite over the images directly in ``folder`` (not its sub-folders)."""
    cfg = cfg or ValidationConfig()
    root = Path(folder)
    table = build_image_table(list_images(root), max_pixels=cfg.max_pixels, progress=progress)
    outcomes = _run_suite(
        _gx_context(), "images", _with_min_side(table), _image_rules(cfg, with_min_side=True)
    )
    return _result(root, "images", cfg, table, outcomes)


def validate_pairs(
    pairs_dir: str | os.PathLike[str], cfg: ValidationConfig | None = None, *, progress: bool = False
) -> ValidationResult:
    """Run the image suite over ``pairs_dir/hr`` + ``pairs_dir/lr`` and the pair suite over their name join."""
    cfg = cfg or ValidationConfig()
    root = Path(pairs_dir)
    hr_files, lr_files = side_images(root)  # PairsLayoutError (a NotADirectoryError) without hr/ or lr/
    hr = build_image_table(hr_files, max_pixels=cfg.max_pixels, progress=progress)
    lr = build_image_table(lr_files, max_pixels=cfg.max_pixels, progress=progress)
    table = pd.concat([hr.assign(role="hr"), lr.assign(role="lr")], ignore_index=True)
    pairs = build_pair_table(hr, lr, cfg.sf)
    context = _gx_context()
    # HR files repeat across LR variants by design, so duplicates are judged per pair (rule unique_pairs).
    outcomes = _run_suite(
        context, "images", table, _image_rules(cfg, with_min_side=False, unique_files=False)
    )
    outcomes += _run_suite(context, "pairs", pairs, _pair_rules(cfg))
    return _result(root, "pairs", cfg, table, outcomes, pairs)


# ------------------------------------------------------------------------------------------------ reports


def _records(frame: pd.DataFrame | None) -> list[dict[str, Any]] | None:
    if frame is None:
        return None
    return json.loads(frame.to_json(orient="records"))


def report_dict(result: ValidationResult) -> dict[str, Any]:
    """The JSON report: status, config, every rule with its failing files, and the per-image table."""
    t = result.table
    readable = t[t["readable"]]
    return {
        "success": result.success,
        "mode": result.mode,
        "folder": str(result.folder),
        "config": asdict(result.config),
        "counts": {
            "images": len(t),
            "readable": len(readable),
            "pairs": None if result.pairs is None else len(result.pairs),
            "bit_depths": {
                str(k): int(v) for k, v in readable["bit_depth"].value_counts().sort_index().items()
            },
            "channels": {str(k): int(v) for k, v in readable["channels"].value_counts().sort_index().items()},
        },
        "rules": [asdict(r) | {"files": list(r.files)} for r in result.rules],
        "failures": [{"rule": f.rule, "files": list(f.files)} for f in result.failures],
        "images": _records(t),
        "pairs": _records(result.pairs),
    }


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report_markdown(result: ValidationResult, max_files: int = 50) -> str:
    """Markdown report: status, one table row per rule, then the failing files of each broken rule."""
    d = report_dict(result)
    status = "PASS" if result.success else "FAIL"
    lines = [
        f"# Data validation: {status}",
        "",
        f"- folder: `{d['folder']}` ({d['mode']})",
        f"- images: {d['counts']['images']} ({d['counts']['readable']} readable)"
        + (f", pair names: {d['counts']['pairs']}" if d["counts"]["pairs"] is not None else ""),
        f"- bit depths: {d['counts']['bit_depths']}; channels: {d['counts']['channels']}",
        f"- config: {', '.join(f'{k}={v}' for k, v in d['config'].items())}",
        "",
        "| rule | check | result | failing files |",
        "|---|---|---|---|",
    ]
    for r in result.rules:
        lines.append(
            f"| {r.rule} | {_md_cell(r.description)} | {'pass' if r.success else 'FAIL'} | {len(r.files)} |"
        )
    for f in result.failures:
        lines += ["", f"## {f.rule}", ""]
        lines += [f"- `{_md_cell(p)}`" for p in f.files[:max_files]]
        if len(f.files) > max_files:
            lines.append(f"- ... and {len(f.files) - max_files} more (see report.json)")
    errors = result.table[~result.table["readable"]]
    if len(errors):
        lines += ["", "## unreadable files", ""]
        lines += [
            f"- `{_md_cell(p)}`: {_md_cell(str(e))}"
            for p, e in zip(errors["path"], errors["error"], strict=True)
        ][:max_files]
    return "\n".join(lines) + "\n"


def report_html(result: ValidationResult, max_files: int = 50) -> str:
    """Standalone HTML report with the same content as the Markdown one."""
    d = report_dict(result)
    esc = html.escape
    status = "PASS" if result.success else "FAIL"
    colour = "#1a7f37" if result.success else "#cf222e"
    rows = "".join(
        f"<tr><td>{esc(r.rule)}</td><td>{esc(r.description)}</td>"
        f"<td style='color:{'#1a7f37' if r.success else '#cf222e'}'>{'pass' if r.success else 'FAIL'}</td>"
        f"<td>{len(r.files)}</td></tr>"
        for r in result.rules
    )
    details = ""
    for f in result.failures:
        items = "".join(f"<li><code>{esc(p)}</code></li>" for p in f.files[:max_files])
        more = f"<li>... and {len(f.files) - max_files} more</li>" if len(f.files) > max_files else ""
        details += f"<h2>{esc(f.rule)}</h2><ul>{items}{more}</ul>"
    errors = result.table[~result.table["readable"]]
    if len(errors):
        items = "".join(
            f"<li><code>{esc(p)}</code>: {esc(str(e))}</li>"
            for p, e in list(zip(errors["path"], errors["error"], strict=True))[:max_files]
        )
        details += f"<h2>unreadable files</h2><ul>{items}</ul>"
    c = d["counts"]
    pair_note = "" if c["pairs"] is None else f"; pair names: {c['pairs']}"
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>difiisr data validation</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}</style></head><body>"
        f"<h1>Data validation: <span style='color:{colour}'>{status}</span></h1>"
        f"<p>folder <code>{esc(d['folder'])}</code> ({esc(d['mode'])}); images: {c['images']} "
        f"({c['readable']} readable){pair_note}; "
        f"bit depths {esc(str(c['bit_depths']))}; channels {esc(str(c['channels']))}</p>"
        f"<p>config: {esc(', '.join(f'{k}={v}' for k, v in d['config'].items()))}</p>"
        f"<table><tr><th>rule</th><th>check</th><th>result</th><th>failing files</th></tr>{rows}</table>"
        f"{details}</body></html>\n"
    )


def report_dir_for(folder: str | os.PathLike[str], report_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the reports of ``folder`` go: ``report_dir``, or ``REPORTS_ROOT/PATH`` (module docstring).

    ``ReportLocationError`` when that folder is ``folder`` itself or inside it (the input is never written into).
    """
    source = Path(folder).resolve()
    if report_dir is None:
        cwd = Path.cwd().resolve()
        key = source.relative_to(cwd) if source.is_relative_to(cwd) else Path(*source.parts[1:])
        out = REPORTS_ROOT / key
        fix = "run from another directory or pass --report-dir outside it"
    else:
        out = Path(report_dir)
        fix = "pass a --report-dir outside it"
    if out.resolve().is_relative_to(source):
        raise ReportLocationError(
            f"report folder {out.resolve()} is inside the validated folder {source}; validation never writes "
            f"into its input: {fix}"
        )
    return out


def write_reports(result: ValidationResult, report_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` atomically into ``report_dir_for(...)``.

    Temp files of an interrupted earlier report write are removed first.
    """
    out = report_dir_for(result.folder, report_dir)
    remove_stale_temp_files(out)
    return [
        atomic_write_text(out / "report.json", json.dumps(report_dict(result), indent=2) + "\n"),
        atomic_write_text(out / "report.md", report_markdown(result)),
        atomic_write_text(out / "report.html", report_html(result)),
    ]
