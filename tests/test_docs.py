"""The README says what is true of the code, and every benchmark starts one way:
`python -m benchmarks.<name>` from the repository root."""

import re
import runpy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BENCHMARKS = sorted(
    p.stem for p in (ROOT / "benchmarks").glob("*.py") if "__main__" in p.read_text()
)


def test_readme_states_setup_and_has_no_placeholders_or_stale_sizes() -> None:
    assert "DEMO_COST" not in README
    assert "Python 3.11" in README and "download.pytorch.org/whl/cpu" in README
    assert "## Troubleshooting / resuming" in README and "--ckpt_path last" in README
    # SemanticPack's patch and latent in the demo config, where the README names them.
    pack = yaml.safe_load((ROOT / "configs/stage1.yaml").read_text())["model"]["init_args"]
    patch = pack["semantic_pack"]["init_args"]["patch"]
    assert f"`{patch}`" in README and "[2, 4, 4]" not in README
    assert "16 x 16 latent" not in README
    assert "the PCA codec's patches" not in README and "the DiT's tokens" in README


def test_benchmarks_are_started_one_way() -> None:
    assert BENCHMARKS, "no benchmark scripts found"
    commands = re.findall(r"python[^`\n]*benchmarks[./]\w+", README)
    assert commands and all("python -m benchmarks." in c for c in commands), commands
    assert "PYTHONPATH=" not in README


@pytest.mark.parametrize("name", BENCHMARKS)
def test_every_benchmark_runs_as_a_module(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", [f"benchmarks.{name}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module(f"benchmarks.{name}", run_name="__main__")
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
