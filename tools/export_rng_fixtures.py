"""Writes tests/fixtures/rng/torch_randn.json: torch's CPU randn streams that src/rng.rs must reproduce.

Each case seeds torch.manual_seed(seed) and draws the listed sizes in order from the default generator
(as DDIMPipeline does: x_T first, then one tensor per step when eta > 0).
Run: /work/venv/bin/python tools/export_rng_fixtures.py
"""
import json
import pathlib

import torch

CASES = [
    {"seed": 0, "sizes": [3 * 32 * 32, 1000]},  # second draw: not a multiple of 16
    {"seed": 42, "sizes": [37, 16, 2 * 1 * 32 * 32]},
    {"seed": 2**32 + 5, "sizes": [64]},  # torch keeps only the low 32 bits for mt19937
]


def main():
    out = []
    for case in CASES:
        torch.manual_seed(case["seed"])
        draws = [torch.randn(n, dtype=torch.float32).tolist() for n in case["sizes"]]
        out.append({"seed": case["seed"], "draws": draws})
    path = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "rng" / "torch_randn.json"
    path.write_text(json.dumps({"torch": torch.__version__, "cases": out}))
    print("wrote", path)


if __name__ == "__main__":
    main()
