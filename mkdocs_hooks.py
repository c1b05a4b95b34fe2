"""mkdocs hooks: README.md becomes the home page and benchmarks/results/ the results pages,
read from where they live (no copies in docs/)."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "benchmarks" / "results"


def _title(page: Path) -> str:
    first = page.read_text().splitlines()[0] if page.stat().st_size else page.stem
    return first.lstrip("# ").strip() or page.stem


def on_config(config):
    """A Results section in the navigation: one entry per results page."""
    pages = [{_title(p): f"results/{p.name}"} for p in sorted(RESULTS.glob("*.md"))]
    config["nav"].append({"Results": pages})
    return config


def on_files(files: Files, config) -> Files:
    """Add the README as index.md and every results page and figure under results/."""
    files.append(File.generated(config, "index.md", abs_src_path=str(ROOT / "README.md")))
    for path in sorted(RESULTS.iterdir()):
        if path.suffix in (".md", ".png"):
            files.append(File.generated(config, f"results/{path.name}", abs_src_path=str(path)))
    return files
