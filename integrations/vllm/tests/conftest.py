"""Shared fixtures: converted checkpoints made by the real CLI from the repository's fixtures.

Tests convert with `node bin/marlin-fp4.js convert … --device cpu` (the built CLI; `npm ci`
or `npm run build` first) so that the loader is checked against what convert really writes.
The TP variants come from the fixture generator (tools/fixture-generator/), compiled into
build/ by `npm run build:tools` when it is not there yet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
FIXTURES = REPO / "fixtures" / "models"
GENERATOR = REPO / "build" / "tools" / "fixture-generator" / "cli.js"

#: Committed fixtures, and TP-friendly variants generated from the same presets.
GENERATED = {
    # 4 heads / 2 KV heads, I 256: every layer splits over 2 and 4 ranks at Marlin boundaries.
    "llama-tp": ["--preset", "llama-tiny", "--flavour", "modelopt", "--seed", "3", "--set", "heads=4", "--set", "kvHeads=2", "--set", "intermediateSize=256"],
    "qwen3-moe-tp": ["--preset", "qwen3-moe-tiny", "--flavour", "modelopt", "--seed", "3", "--set", "heads=4", "--set", "kvHeads=4", "--set", "intermediateSize=256"],
    # Fused parts (q/k/v, gate/up, each expert's gate/up) with different global scales: convert
    # re-encodes their block scales onto the largest (docs/FORMAT.md §8.1).
    "llama-split-globals": ["--preset", "llama-tiny", "--flavour", "modelopt", "--seed", "3", "--split-globals"],
    "qwen3-moe-split-globals": ["--preset", "qwen3-moe-tiny", "--flavour", "modelopt", "--seed", "3", "--split-globals"],
}


def _node_ready() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH"
    if not (REPO / "dist" / "cli" / "main.js").exists():
        return "the CLI is not built (run npm ci or npm run build first)"
    return None


def _run(args: list[str]) -> None:
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory):
    """name -> (converted dir, NVFP4 source dir), converting each source once per session."""
    reason = _node_ready()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("marlin")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in cache:
            source = FIXTURES / name
            if name in GENERATED:
                source = root / f"{name}-source"
                if not GENERATOR.exists():
                    _run(["npm", "run", "--silent", "build:tools"])
                _run(["node", str(GENERATOR), str(source), *GENERATED[name]])
            out = root / name
            _run(["node", "bin/marlin-fp4.js", "convert", str(source), "-o", str(out), "--device", "cpu", "--quiet"])
            cache[name] = (out, source)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def structure_source(tmp_path_factory: pytest.TempPathFactory):
    """name -> source dir of one of the fixture generator's checkpoint structures (structures.ts)."""
    reason = _node_ready()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("structures")
    cache: dict[tuple[str, str], Path] = {}

    def get(name: str, algo_in: str = "hf_quant_config") -> Path:
        if (name, algo_in) not in cache:
            if not (GENERATOR.parent / "structures.js").exists():
                _run(["npm", "run", "--silent", "build:tools"])
            out = root / f"{name}-{algo_in}"
            module = (GENERATOR.parent / "structures.js").as_uri()
            script = f"import({json.dumps(module)}).then((m) => m.generateStructure(process.argv[1], process.argv[2], {{ algoIn: process.argv[3] }}))"
            _run(["node", "-e", script, str(out), name, algo_in])
            cache[(name, algo_in)] = out
        return cache[(name, algo_in)]

    return get


def convert(source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """Run the real CLI's convert (CPU); the caller checks the outcome."""
    return subprocess.run(["node", "bin/marlin-fp4.js", "convert", str(source), "-o", str(out), "--device", "cpu", "--quiet", *extra], cwd=REPO, capture_output=True, text=True)


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def overwrite_tensor(directory: Path, name: str, data: bytes) -> None:
    """Overwrite one tensor's bytes in place (same size), to make a deliberately broken checkpoint."""
    from marlin_fp4_vllm.safetensors_io import read_header

    for shard in sorted(directory.glob("*.safetensors")):
        entries, _ = read_header(str(shard))
        if name in entries:
            entry = entries[name]
            assert entry.end - entry.begin == len(data)
            with open(shard, "r+b") as handle:
                handle.seek(entry.data_start + entry.begin)
                handle.write(data)
            return
    raise KeyError(name)
