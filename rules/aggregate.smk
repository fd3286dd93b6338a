rule aggregate:
    """Table of all cells, mean +/- std over seeds, and Table 1 (sweet spots)."""
    input:
        cells=all_cells(),
        references=reference_cells(),
        heldout=heldout_cells(),
        benchmarks=benchmark_cells(),
        metas=expand(f"{layout.DATA_DIR}/meta.json", dataset=config["grid"]["datasets"]),
    output:
        cells=f"{layout.TABLES_DIR}/cells.csv",
        summary=report(f"{layout.TABLES_DIR}/summary.csv", caption="captions/summary.rst", category="Tables"),
        summary_md=f"{layout.TABLES_DIR}/summary.md",
        table1=report(f"{layout.TABLES_DIR}/table1.csv", caption="captions/table1.rst", category="Tables"),
        table1_md=f"{layout.TABLES_DIR}/table1.md",
        regimes=f"{layout.TABLES_DIR}/regimes.csv",
        comparisons=report(f"{layout.TABLES_DIR}/comparisons.csv", caption="captions/comparisons.rst", category="Tables"),
        cell_comparison=f"{layout.TABLES_DIR}/cell_comparison.csv",
        cell_comparison_tests=report(
            f"{layout.TABLES_DIR}/cell_comparison_tests.csv", caption="captions/cell_comparison_tests.rst", category="Tables"
        ),
        heldout=f"{layout.TABLES_DIR}/heldout.csv",
        repair=f"{layout.TABLES_DIR}/repair.csv",
        repair_summary=report(f"{layout.TABLES_DIR}/repair_summary.csv", caption="captions/repair.rst", category="Tables"),
        repair_md=f"{layout.TABLES_DIR}/repair.md",
        benchmarks=f"{layout.TABLES_DIR}/benchmarks.csv",
        benchmarks_summary=report(
            f"{layout.TABLES_DIR}/benchmarks_summary.csv", caption="captions/benchmarks_summary.rst", category="Tables"
        ),
        surgery_table2=report(f"{layout.TABLES_DIR}/surgery_table2.csv", caption="captions/surgery_table2.rst", category="Tables"),
        surgery_table2_md=f"{layout.TABLES_DIR}/surgery_table2.md",
        surgery_guided_vs_random=f"{layout.TABLES_DIR}/surgery_guided_vs_random.csv",
        surgery_reward_risk=f"{layout.TABLES_DIR}/surgery_reward_risk.csv",
    log:
        layout.log("aggregate.log"),
    conda:
        CONDA_ENV
    threads: 1
    params:
        analysis=config["analysis"],
        controls=config["grid"]["controls"],
        benchmark_roles=benchmark_roles(),
        surgery_policies=surgery_policies(),
    script:
        "../workflow_scripts/aggregate.py"


rule figures:
    """The papers' figures from the tables and the SVD spectra, as PNG and PDF."""
    input:
        summary=rules.aggregate.output.summary,
        table1=rules.aggregate.output.table1,
        regimes=rules.aggregate.output.regimes,
        repair_summary=rules.aggregate.output.repair_summary,
        guided_vs_random=rules.aggregate.output.surgery_guided_vs_random,
        reward_risk=rules.aggregate.output.surgery_reward_risk,
        cell_comparison=rules.aggregate.output.cell_comparison,
        spectra=[entry["path"] for entry in all_spectra()],
    output:
        figure_targets(),  # the PNGs are in the report, each with the caption of its name
    log:
        layout.log("figures.log"),
    conda:
        CONDA_ENV
    threads: 1
    params:
        analysis=config["analysis"],
        spectra=all_spectra(),
        controls={name: resolve_finetune(config, name) for name in config["grid"]["controls"]},
    script:
        "../workflow_scripts/figures.py"
