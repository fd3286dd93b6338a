"""Figure 8: the SVD cache of the checkpoint against the full U, S, V^T it replaced (computed from
the shapes), and the same for the 7B-shaped models of the paper grid; what one 7B cell reads."""

from __future__ import annotations

from spectral_edit.edit.svd_cache import read_spectrum


def cache_sizes(paths: dict) -> None:
    spectrum = read_spectrum(paths["svd"] / "spectrum.json")
    compact = (paths["svd"] / "factors.safetensors").stat().st_size
    full = sum(4 * m["rank"] * (m["shape"][0] + m["shape"][1] + 1) for m in spectrum["matrices"])

    def per_checkpoint(shapes: list[tuple[int, int]]) -> tuple[float, float]:
        return (sum(4 * min(s) * (min(s) + 1) for s in shapes), sum(4 * min(s) * (s[0] + s[1] + 1) for s in shapes))

    # Shapes from the models' config.json on the hub. Qwen2.5-7B-Instruct: hidden 3584, MLP 18944,
    # 28 layers, key-value width 512, vocabulary 152064, separate LM head; Qwen2.5-0.5B-Instruct:
    # 896, 4864, 24 layers, 128, 151936, tied; Gemma-3-1B-IT: 1152, 6912, 26 layers, query width
    # 1024, key-value width 256, 262144, tied.
    def decoder(h, f, q, kv, layers, vocab, heads):
        return [(q, h), (kv, h), (kv, h), (h, q), (f, h), (f, h), (h, f)] * layers + [(vocab, h)] * heads

    grid = {
        "Qwen2.5-7B": decoder(3584, 18944, 3584, 512, 28, 152064, 2),
        "Qwen2.5-0.5B": decoder(896, 4864, 896, 128, 24, 151936, 1),
        "Gemma-3-1B": decoder(1152, 6912, 1024, 256, 26, 262144, 1),
    }
    sizes = {name: per_checkpoint(shapes) for name, shapes in grid.items()}
    compact_7b, full_7b = sizes["Qwen2.5-7B"]
    # The paper grid: each model fine-tuned on 5 datasets x 3 seeds (15 checkpoints per model).
    grid_compact, grid_full = (15 * sum(size[i] for size in sizes.values()) for i in (0, 1))
    # What one 7B cell reads (fp32 files), from the shapes: before, a new process read the base
    # weights and the full factors; in the server the model is loaded once per checkpoint and a
    # cell reads the base and fine-tuned matrices (dW) and the compact factors.
    params_7b = sum(m * n for m, n in grid["Qwen2.5-7B"]) + 28 * 2 * 3584 + 3584  # + norms
    weights_7b = 4 * params_7b
    print(
        f"[8] a Qwen2.5-7B cell reads {(weights_7b + full_7b) / 1e9:.0f} GB before (base weights "
        f"{weights_7b / 1e9:.1f} GB + full factors, in a new process that also loads the model) and "
        f"{(2 * weights_7b + compact_7b) / 1e9:.0f} GB in the server (base and fine-tuned matrices + compact factors; "
        f"the model loaded once per checkpoint), or only the compact factors ({compact_7b / 1e9:.1f} GB) with W_base "
        f"and dW resident in {2 * weights_7b / 1e9:.0f} GB of memory (evaluation.server.resident_gb)"
    )
    print(
        f"[8] SVD cache of this checkpoint: {compact / 2**20:.0f} MiB vs {full / 2**20:.0f} MiB for U, S, V^T whole "
        f"-> {compact / full:.2f}x; a Qwen2.5-7B checkpoint: {compact_7b / 1e9:.1f} GB vs {full_7b / 1e9:.1f} GB "
        f"({compact_7b / full_7b:.2f}x); the paper grid's 45 checkpoints: {grid_compact / 1e9:.0f} GB vs "
        f"{grid_full / 1e9:.0f} GB ({grid_compact / grid_full:.2f}x)"
    )
