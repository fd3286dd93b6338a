"""Spectral methods on small matrices: reconstruction, optimality, exact counts, seeding."""

import math

import pytest
import torch

from spectral_edit.edit.apply import new_singular_values
from spectral_edit.edit.methods import MatrixContext, available_methods, get_method, kept_count
from spectral_edit.edit.rebuild import rebuild_update
from spectral_edit.edit.svd import svd_of_update
from spectral_edit.edit.svd_cache import stored_side
from spectral_edit.errors import ConfigError


def _pair(m=12, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(m, n, generator=g, dtype=torch.float64)
    finetuned = base + 0.1 * torch.randn(m, n, generator=g, dtype=torch.float64)
    return base, finetuned


def _edit(method, base, finetuned, retention, seed=0, name="layer.weight"):
    u, s, vh = svd_of_update(base, finetuned)
    ctx = MatrixContext(name, tuple(base.shape), retention, seed, get_method(method).defaults)
    s_new = new_singular_values(get_method(method), s, ctx)
    # As an evaluation cell does: dW from the checkpoints, the cache's one side of vectors.
    side = stored_side(tuple(base.shape))
    update = rebuild_update(finetuned - base, s, s_new, side, vh.T if side == "right" else u)
    return s, s_new, (base + update).float()


@pytest.mark.parametrize("method", ["top_k", "bottom_k", "random_k"])
def test_retention_one_reconstructs_finetuned(method):
    base, finetuned = _pair()
    _, s_new, edited = _edit(method, base, finetuned, 1.0)
    assert torch.count_nonzero(s_new) == min(base.shape)
    torch.testing.assert_close(edited, finetuned.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("retention", [0.9, 0.5, 0.3, 0.1])
def test_top_k_is_best_rank_k_approximation(retention):
    base, finetuned = _pair(20, 9)
    delta = finetuned - base
    s, s_new, edited = _edit("top_k", base, finetuned, retention)
    k = kept_count(len(s), retention)
    assert torch.count_nonzero(s_new) == k
    # Eckart-Young: the best rank-k approximation leaves exactly the tail energy.
    residual = torch.linalg.matrix_norm(delta.float() - (edited - base.float()))
    tail = torch.linalg.vector_norm(torch.linalg.svdvals(delta)[k:])
    assert residual.item() == pytest.approx(tail.item(), rel=1e-4, abs=1e-6)
    # ... and it equals the truncated SVD computed independently in float64.
    u, sv, vh = torch.linalg.svd(delta)
    best = (u[:, :k] * sv[:k]) @ vh[:k]
    torch.testing.assert_close(edited - base.float(), best.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", ["top_k", "bottom_k", "random_k"])
@pytest.mark.parametrize("retention", [0.05, 0.2, 0.7, 0.9])
def test_methods_keep_exactly_k(method, retention):
    s = torch.linspace(5.0, 0.1, 40)
    ctx = MatrixContext("m", (40, 50), retention, 3, get_method(method).defaults)
    s_new = new_singular_values(get_method(method), s, ctx)
    k = kept_count(40, retention)
    assert torch.count_nonzero(s_new) == k
    kept = torch.nonzero(s_new).flatten()
    torch.testing.assert_close(s_new[kept], s[kept])  # kept values are unchanged
    if method == "top_k":
        assert kept.tolist() == list(range(k))
    if method == "bottom_k":
        assert kept.tolist() == list(range(40 - k, 40))


def test_random_k_is_seeded_and_nested():
    s = torch.linspace(3.0, 0.1, 64)
    method = get_method("random_k")

    def kept(retention, seed, name="a"):
        ctx = MatrixContext(name, (64, 64), retention, seed, method.defaults)
        return set(torch.nonzero(method.edit(s, ctx)).flatten().tolist())

    assert kept(0.3, 0) == kept(0.3, 0)
    assert kept(0.3, 0) != kept(0.3, 1)
    assert kept(0.3, 0) != kept(0.3, 0, name="b")
    assert kept(0.1, 0) <= kept(0.3, 0) <= kept(0.7, 0)
    assert kept(0.3, 0) != set(range(len(kept(0.3, 0))))  # not simply the top ones


def test_kept_count_uses_ceiling_without_float_noise():
    assert kept_count(10, 0.7) == 7  # 0.7 * 10 = 7.000000000000001 in binary floating point
    assert kept_count(10, 0.71) == 8
    assert kept_count(576, 0.05) == math.ceil(0.05 * 576)
    assert kept_count(3, 0.01) == 1
    assert kept_count(7, 1.0) == 7
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="outside"):
            kept_count(10, bad)


def test_registry_lists_methods_and_rejects_unknown():
    assert {"top_k", "bottom_k", "random_k"} <= set(available_methods())
    with pytest.raises(ConfigError, match="unknown spectral method 'top_j'"):
        get_method("top_j")
    with pytest.raises(ConfigError, match="unknown parameter 'sed'"):
        get_method("random_k").resolve_params({"sed": 1}, "config: method_variants.x")


def test_edit_rejects_negative_singular_values():
    from spectral_edit.edit.methods import SpectralMethod

    broken = SpectralMethod("broken", lambda s, ctx: -s, True, {}, "")
    with pytest.raises(RuntimeError, match="negative"):
        new_singular_values(broken, torch.ones(3), MatrixContext("m", (3, 3), 0.5, 0))


@pytest.mark.parametrize("retention", [0.5, 0.2, 0.05])
def test_uniform_shrink_keeps_top_k_energy_along_the_whole_update(retention):
    base, finetuned = _pair(30, 17)
    delta = (finetuned - base).float()
    s, s_top, _ = _edit("top_k", base, finetuned, retention)
    s, s_shrink, edited = _edit("uniform_shrink", base, finetuned, retention)
    # The same share of sum(sigma^2) as top-k at this retention ...
    assert float((s_shrink.double() ** 2).sum()) == pytest.approx(float((s_top.double() ** 2).sum()), rel=1e-6)
    # ... by one factor on every component, so the edit is W_base + lambda * dW.
    ratio = s_shrink / s
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-6)
    assert 0 < float(ratio[0]) < 1
    torch.testing.assert_close(edited, base.float() + float(ratio[0]) * delta, rtol=0, atol=1e-5)


def test_a_methods_code_digest_covers_the_package_modules_it_imports(tmp_path, monkeypatch):
    import inspect
    from pathlib import Path

    from spectral_edit.edit import methods

    def closure(name):
        files = methods.package_import_closure(Path(inspect.getsourcefile(get_method(name).edit)))
        return {path.relative_to(methods._PACKAGE_ROOT).as_posix() for path in files}

    assert closure("top_k") == {"edit/methods/top_k.py", "edit/methods/__init__.py", "errors.py"}
    assert "edit/random_matrix.py" in closure("dg_hard") and "edit/random_matrix.py" not in closure("random_k")
    # The digest follows the contents of every file in the closure.
    before = get_method("dg_hard").source_digest
    copy = tmp_path / "spectral_edit"
    import shutil

    shutil.copytree(methods._PACKAGE_ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(methods, "_PACKAGE_ROOT", copy)
    dg_file = copy / "edit" / "methods" / "dg_hard.py"
    monkeypatch.setattr(inspect, "getsourcefile", lambda _: str(dg_file))
    assert get_method("dg_hard").source_digest == before
    (copy / "edit" / "random_matrix.py").write_text((copy / "edit" / "random_matrix.py").read_text() + "\n# edited\n")
    methods._sources_digest.cache_clear()  # computed once per process: files do not change while planning
    assert get_method("dg_hard").source_digest != before


def test_the_readme_method_table_agrees_with_the_registry():
    """Every registered method has a row in the README's method table, citing the paper it was
    registered with and naming each of its parameters."""
    import re

    from conftest import REPO
    from spectral_edit.edit.methods import available_methods

    text = (REPO / "README.md").read_text()
    table = text.split("| name in `grid.methods` | paper |", 1)[1].split("\n\n", 1)[0]
    # Cells split at the pipes that are not escaped (\| is a pipe inside a cell).
    rows = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip()[1:-1])] for line in table.splitlines()[2:]]
    for name, method in available_methods().items():
        matching = [row for row in rows if f"`{name}`" in re.findall(r"`[^`]+`", row[0])]
        assert len(matching) == 1, f"{name} has {len(matching)} rows in the README's method table"
        row = matching[0]
        assert method.paper and row[1] == method.paper, (name, row[1], method.paper)
        for param in method.defaults:
            assert f"`{param}`" in row[3] or param in ("retention",), (name, param)
