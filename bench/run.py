"""Benchmarks of the workflow's costs, printed as figures (nothing here asserts a time).

Run after the main job (``snakemake --cores 2``) so the embedded default's base model,
fine-tuned checkpoint, SVD cache and evaluation split exist under ``results/``:

    .venv/bin/python bench/run.py

It prints these figures, each measured side by side in this one run by a module of
bench/figures/ (its docstring says what it compares); the child processes they start are the
programs in bench/children/, and what the figures share is in bench/common.py:

1. a cell from the cached SVD against recomputing the SVD for it (fig01_cell_from_svd_cache);
2. batched evaluation throughput against a plain ``transformers`` loop (fig02_evaluation_throughput);
3. peak memory of the SVD stage against one model's weights (fig03_svd_peak_memory);
4. planning the paper's grid, ``snakemake -n --configfile config/paper.yaml`` (fig04_paper_grid_planning);
5. the prompts' shared head run once against every prompt whole (fig05_shared_prompt_head);
6. a fine-tuning step with fused against foreach AdamW (fig06_fused_adamw);
7. edited cells served by the checkpoint's evaluation server against the evaluation pass alone and
   against a cell in its own process, then a checkpoint's cells through snakemake
   (fig07_served_cells; ``--dataset`` picks the checkpoint);
8. the SVD cache against the full U, S, V^T, here and for the 7B shapes (fig08_svd_cache_size);
9. the workflow's evaluation against lm-evaluation-harness, and its FLOP rate against a timed
   matmul (fig09_against_lm_eval; lm-eval is a dependency of the workflow, setup.sh installs it);
10. fine-tuning steps the workflow's way, its way before and through a plain Trainer, and two side
   by side on one thread each (fig10_finetuning_steps).

``--device``/``--dtype`` set the runtime of figures 2, 7 and 9.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import results_paths  # noqa: E402
from bench.figures.fig01_cell_from_svd_cache import cell_from_cache_vs_recomputed_svd  # noqa: E402
from bench.figures.fig02_evaluation_throughput import evaluation_throughput  # noqa: E402
from bench.figures.fig03_svd_peak_memory import svd_stage_peak_memory  # noqa: E402
from bench.figures.fig04_paper_grid_planning import paper_grid_dry_run  # noqa: E402
from bench.figures.fig05_shared_prompt_head import shared_prefix_vs_whole_prompts  # noqa: E402
from bench.figures.fig06_fused_adamw import fused_vs_foreach_adamw  # noqa: E402
from bench.figures.fig07_served_cells import served_cells  # noqa: E402
from bench.figures.fig08_svd_cache_size import cache_sizes  # noqa: E402
from bench.figures.fig09_against_lm_eval import against_lm_evaluation_harness  # noqa: E402
from bench.figures.fig10_finetuning_steps import finetuning_step_rates  # noqa: E402
from spectral_edit.plan.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO, help="where the main job wrote results/ (default: the repo)")
    parser.add_argument(
        "--configfile",
        type=Path,
        nargs="+",
        default=[REPO / "config.yaml"],
        help="as given to snakemake: config.yaml and any overlays",
    )
    parser.add_argument("--dataset", help="the checkpoint's dataset (default: the grid's first)")
    parser.add_argument("--retention", type=float, default=0.01)
    parser.add_argument("--examples", type=int, default=160, help="prompts in the throughput comparison")
    parser.add_argument("--only", type=int, nargs="+", default=list(range(1, 11)), help="which figures to measure")
    parser.add_argument("--device", default="auto", help="runtime.device of figures 2, 7 and 9 (auto: a GPU if any)")
    parser.add_argument("--dtype", default="auto", help="runtime.dtype of figures 2, 7 and 9 (auto: bf16 on a GPU, else fp32)")
    args = parser.parse_args()
    runtime = {"device": args.device, "dtype": args.dtype}
    config = load_config(*args.configfile)
    paths = results_paths(args.workdir, config, args.dataset)
    print(f"bench: {paths['keys']} in {args.workdir}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        figures = {
            1: lambda: cell_from_cache_vs_recomputed_svd(paths, config, args.retention, scratch),
            2: lambda: evaluation_throughput(paths, config, args.examples, runtime),
            3: lambda: svd_stage_peak_memory(paths, config, scratch),
            4: paper_grid_dry_run,
            5: lambda: shared_prefix_vs_whole_prompts(paths, config, args.examples),
            6: lambda: fused_vs_foreach_adamw(paths, config),
            7: lambda: served_cells(paths, config, args.configfile, scratch, runtime),
            8: lambda: cache_sizes(paths),
            9: lambda: against_lm_evaluation_harness(paths, config, args.examples, scratch, runtime),
            10: lambda: finetuning_step_rates(paths, config, scratch),
        }
        for figure in args.only:
            figures[figure]()


if __name__ == "__main__":
    main()
