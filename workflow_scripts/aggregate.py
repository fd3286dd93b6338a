from spectral_edit.analysis.aggregate import build_tables
from spectral_edit.atomic import atomic_path, write_text
from spectral_edit.jobs import job_logging
from spectral_edit.plan.records import Analysis

CSV = ["cells", "summary", "table1", "regimes", "comparisons", "heldout", "repair", "repair_summary", "benchmarks"]
CSV += ["benchmarks_summary", "surgery_table2", "surgery_guided_vs_random", "surgery_reward_risk"]
CSV += ["cell_comparison", "cell_comparison_tests"]

with job_logging(snakemake.log[0], snakemake.threads, "aggregate") as log:
    params = snakemake.params
    analysis = Analysis.from_mapping(params.analysis)
    tables = build_tables(
        list(snakemake.input.cells) + list(snakemake.input.references),
        analysis,
        controls=params.controls,
        heldout_paths=list(snakemake.input.heldout),
        # A grid dataset's meta.json is its input, in the grid's order.
        metas=dict(zip(snakemake.config["grid"]["datasets"], snakemake.input.metas)),
        benchmark_paths=list(snakemake.input.benchmarks),
        benchmark_roles={(task, benchmark): role for task, benchmark, role in params.benchmark_roles},
        surgery_policies=params.surgery_policies,
    )
    for name in CSV:
        with atomic_path(getattr(snakemake.output, name)) as tmp:
            tables[name].to_csv(tmp, index=False)
    for name in ("summary_md", "table1_md", "repair_md", "surgery_table2_md"):
        write_text(getattr(snakemake.output, name), tables[name])
    log.info("\n%s\n%s", tables["table1_md"], tables["surgery_table2_md"])
