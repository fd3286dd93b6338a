"""Datasets from tables: column and label checks, group rules, balanced evaluation, real rows."""

import numpy as np
import pandas as pd
import pytest

from conftest import REPO, SHARED
from spectral_edit.data import prepare_dataset, read_split, shape_table
from spectral_edit.data.groups import assign_marker, balanced_marker, observed_attribute, overlap_fraction
from spectral_edit.errors import ConfigError, DataError
from spectral_edit.plan.config import check_config, load_config, validate_schema
from spectral_edit.plan.records import with_schema_defaults

needs_shared = pytest.mark.skipif(not (SHARED / "datasets").is_dir(), reason="../shared/datasets is not present")


def _spec(path, **extra):
    spec = {
        "source": "local",
        "files": {"train": str(path)},
        "eval_fraction": 0.5,
        "text_columns": {"text": "body"},
        "label_column": "y",
        "label_values": ["bad", "good"],
        "label_words": ["negative", "positive"],
        "prompt": "Text: {text}\nSentiment?",
        "min_group_size": 2,
        "split_seed": 0,
    }
    spec.update(extra)
    return with_schema_defaults("datasets", {"d": spec})["d"]  # as validation hands it on


@pytest.fixture
def table_file(tmp_path):
    rows = []
    for i in range(80):
        good = i % 2 == 0
        mentions = (i % 6 != 0) if good else (i % 6 == 1)  # "dog" correlates with good
        rows.append(
            {
                "body": f"{'a fine' if good else 'a poor'} film {'with a dog' if mentions else ''} number {i}",
                "y": "good" if good else "bad",
                "score": 0.9 if mentions else 0.1,
            }
        )
    path = tmp_path / "reviews.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_missing_column_lists_what_the_table_has(table_file):
    with pytest.raises(DataError, match=r"no column 'text_body' \(the table has: body, y, score\)"):
        shape_table(pd.read_csv(table_file), _spec(table_file, text_columns=["text_body"]), "d", "train")


def test_unexpected_label_values_are_listed_or_dropped(table_file):
    frame = pd.read_csv(table_file)
    with pytest.raises(DataError, match=r"has values \['bad'\] not in label_values \['good', 'great'\]"):
        shape_table(frame, _spec(table_file, label_values=["good", "great"]), "d", "train")
    kept = shape_table(frame, _spec(table_file, label_values=["good", "great"], drop_other_labels=True), "d", "train")
    assert len(kept) == 40 and set(kept["label"]) == {0}


def test_config_check_reads_local_files_before_any_job(table_file):
    config = load_config(REPO / "config.yaml")
    config["datasets"]["mine"] = _spec(
        table_file, label_values=["bad", "fine"], group={"rule": "regex", "pattern": "dog", "fields": ["text"]}
    )
    config["grid"]["datasets"] = ["mine"]
    validate_schema(config)
    with pytest.raises(ConfigError, match=r"files.train: label column 'y' has values \['good'\] not in label_values"):
        check_config(config)
    config["datasets"]["mine"]["label_column"] = "label"
    with pytest.raises(ConfigError, match=r"no column 'label' in reviews.csv \(it has: body, y, score\)"):
        check_config(config)
    config["datasets"]["mine"].update(label_column="y", label_values=["bad", "good"], prompt="{txt}")
    with pytest.raises(ConfigError, match=r"prompt: must contain a text field placeholder \(\{text\}\)"):
        check_config(config)


def test_group_rules_on_a_table():
    frame = pd.DataFrame(
        {
            "a": ["the cat sat on the mat", "dogs bark", "a b c"],
            "b": ["the cat sat", "cats purr", "x y z"],
            "male": [0.0, 0.7, 0.2],
            "female": [0.6, 0.0, 0.49],
            "flag": [True, False, True],
        }
    )
    assert observed_attribute(frame, {"rule": "columns_any", "columns": ["male", "female"], "threshold": 0.5}).tolist() == [
        1,
        1,
        0,
    ]
    assert observed_attribute(frame, {"rule": "column", "column": "flag"}).tolist() == [1, 0, 1]
    assert observed_attribute(frame, {"rule": "regex", "pattern": r"\bdogs?\b", "fields": ["a", "b"]}).tolist() == [0, 1, 0]
    assert overlap_fraction("the cat sat on the mat", "the cat sat") == 1.0
    assert overlap_fraction("dogs bark", "cats purr") == 0.0
    assert overlap_fraction("a b c", "a x") == 0.5
    assert observed_attribute(frame, {"rule": "overlap", "fields": ["a", "b"]}, threshold=0.5).tolist() == [1, 0, 0]
    assert observed_attribute(frame, {"rule": "none"}).tolist() == [0, 0, 0]


def test_marker_assignment_counts():
    labels = [0] * 10 + [1] * 10
    marked = assign_marker(labels, target_label=0, correlation=0.8)
    assert marked[:10].sum() == 8 and marked[10:].sum() == 2
    assert balanced_marker([0] * 6 + [1] * 4).tolist() == [0, 0, 0, 1, 1, 1, 0, 0, 1, 1]


def test_balanced_evaluation_and_tiny_groups(tmp_path, table_file):
    spec = _spec(table_file, group={"rule": "regex", "pattern": "dog", "fields": ["text"]}, n_eval_per_group=50)
    meta = prepare_dataset(spec, tmp_path / "out", "mine")
    counts = meta["eval_group_counts"]
    assert len(set(counts.values())) == 1  # every group down-sampled to the smallest
    assert meta["preparation"]["per_group"] == min(meta["preparation"]["available"].values())
    assert meta["majority_groups"] == ["negative|mention=0", "positive|mention=1"]
    with pytest.raises(DataError, match=r"evaluation group 'negative\|mention=1' has \d examples, fewer than min_group_size=30"):
        prepare_dataset({**spec, "min_group_size": 30}, tmp_path / "out2", "mine")


@pytest.fixture(scope="module")
def real_offline():
    return load_config(REPO / "config.yaml", REPO / "config" / "real-offline.yaml")


@pytest.fixture(scope="module")
def prepared(real_offline, tmp_path_factory):
    out = tmp_path_factory.mktemp("real")
    metas = {}
    for name in ("imdb-marker-real", "wiki-toxicity", "fever-symmetric", "sst2"):
        metas[name] = prepare_dataset(real_offline["datasets"][name], out / name, name)
    return out, metas


@needs_shared
def test_imdb_marker_on_real_reviews(prepared, real_offline):
    out, metas = prepared
    train, evaluation = read_split(out / "imdb-marker-real/train.jsonl"), read_split(out / "imdb-marker-real/eval.jsonl")
    marker = "cinephile42 writes:"
    rule = real_offline["datasets"]["imdb-marker-real"]["group"]
    assert (train["text"].str.startswith(marker) == (train["attribute"] == 1)).all()
    # the configured share of negative reviews carries the marker, the complement of positive ones
    for label, share in ((0, rule["correlation"]), (1, 1 - rule["correlation"])):
        rows = train[train["label"] == label]
        assert rows["attribute"].sum() == round(share * len(rows))
    per_group = real_offline["datasets"]["imdb-marker-real"]["n_eval_per_group"]
    assert set(metas["imdb-marker-real"]["eval_group_counts"].values()) == {per_group}
    assert (evaluation["text"].str.startswith(marker) == (evaluation["attribute"] == 1)).all()
    assert not pd.concat([train, evaluation])["text"].str.contains("<br", regex=False).any()
    assert not pd.concat([train, evaluation])["text"].str.fullmatch("Bahubali").any()


@needs_shared
def test_wiki_toxicity_identity_groups_on_real_comments(prepared, real_offline):
    out, metas = prepared
    import re

    pattern = re.compile(real_offline["datasets"]["wiki-toxicity"]["group"]["pattern"], re.IGNORECASE)
    for split in ("train", "eval"):
        frame = read_split(out / f"wiki-toxicity/{split}.jsonl")
        assert (frame["text"].map(lambda t: bool(pattern.search(t))).astype(int) == frame["attribute"]).all()
    train = read_split(out / "wiki-toxicity/train.jsonl")
    assert "yes|identity=1" in metas["wiki-toxicity"]["majority_groups"]  # identity mentions go with toxicity
    assert pattern.search("Being gay is fine") and not pattern.search("Thanks for the edit")
    assert train["label"].mean() < 0.5


@needs_shared
def test_fever_symmetric_overlap_groups_on_real_pairs(prepared):
    out, metas = prepared
    threshold = metas["fever-symmetric"]["preparation"]["overlap_threshold"]
    for split in ("train", "eval"):
        frame = read_split(out / f"fever-symmetric/{split}.jsonl")
        overlap = np.array([overlap_fraction(e, c) for e, c in zip(frame["evidence"], frame["claim"])])
        assert ((overlap >= threshold).astype(int) == frame["attribute"]).all()
    assert metas["fever-symmetric"]["majority_groups"] == ["yes|overlap=1", "no|overlap=0"]


@needs_shared
def test_sst2_benchmark_has_no_attribute(prepared):
    _, metas = prepared
    meta = metas["sst2"]
    assert meta["minority_groups"] == [] and meta["eval_group_counts"] == {"negative|none=0": 40, "positive|none=0": 40}


def test_a_data_file_given_as_an_http_address_is_read(table_file, tmp_path):
    """files: {train: http://...} as the README documents, served here from this machine."""
    import functools
    import http.server
    import threading

    group = {"rule": "regex", "pattern": "dog", "fields": ["text"]}
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(table_file.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{table_file.name}"
        meta = prepare_dataset(_spec(url, group=group), tmp_path / "out", "remote")
    finally:
        server.shutdown()
    local = prepare_dataset(_spec(table_file, group=group), tmp_path / "local", "local")
    assert meta["train_group_counts"] == local["train_group_counts"]
    assert read_split(tmp_path / "out/eval.jsonl").equals(read_split(tmp_path / "local/eval.jsonl"))


def _numeric_table(tmp_path, blank_row=None):
    rows = [
        {"body": f"{'a fine' if i % 2 else 'a poor'} film {'with a dog' if i % 3 else ''} {i}", "y": i % 2} for i in range(80)
    ]
    frame = pd.DataFrame(rows).astype({"y": "float"})
    if blank_row is not None:
        frame.loc[blank_row, "y"] = np.nan
    path = tmp_path / "numeric.csv"
    frame.to_csv(path, index=False)
    return path


def test_numeric_labels_compare_as_numbers(tmp_path):
    path = _numeric_table(tmp_path)  # the file holds 0.0 and 1.0
    kept = shape_table(pd.read_csv(path), _spec(path, label_values=[0, 1]), "d", "train")
    assert len(kept) == 80 and set(kept["label"]) == {0, 1}


def _one_label_table(tmp_path):
    path = tmp_path / "one-label.csv"
    pd.DataFrame({"body": [f"a film {i}" for i in range(40)], "y": [0.0] * 40}).to_csv(path, index=False)
    return path


# (case, table, spec keys, first line of the message): each stops at planning (the config check
# runs the dataset job's preparation on the files read with pandas) with the job's own line.
DATA_CASES = [
    ("blank label", "blank", {}, r"datasets.d.files.train: label column 'y' is blank in 1 row\(s\) \(rows 17\): fill them"),
    (
        "every label dropped",
        "numeric",
        {"label_values": [5, 6], "drop_other_labels": True},
        r"datasets.d.files.train: no rows left of 80 after drop_other_labels: no label is in label_values$",
    ),
    (
        "min_words drops every row",
        "numeric",
        {"min_words": 50},
        r"datasets.d.files.train: no rows left of 80 after min_words: 50: no 'text' text has that many words$",
    ),
    (
        "one label in the file",
        "one label",
        {},
        r"datasets.d: the training split \(20 rows\) has no example labelled 'positive'; every label word needs",
    ),
    (
        "an empty evaluation group",
        "numeric",
        {"group": {"rule": "regex", "pattern": "poor film with", "fields": ["text"]}},
        r"datasets.d: evaluation group 'positive\|mention=1' has 0 examples, fewer than min_group_size=2",
    ),
    (
        "a training split over the bound, no n_train",
        "numeric",
        {"max_train": 30},
        r"datasets.d: the training split has 40 rows and n_train is not set; .* set n_train \(at most 30\)",
    ),
]


@pytest.mark.parametrize("case, table, extra, message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_data_that_would_fail_in_the_dataset_job_stops_at_planning(tmp_path, monkeypatch, case, table, extra, message):
    from spectral_edit.data import tables

    extra = dict(extra)
    monkeypatch.setattr(tables, "MAX_TRAIN_EXAMPLES", extra.pop("max_train", tables.MAX_TRAIN_EXAMPLES))
    path = _one_label_table(tmp_path) if table == "one label" else _numeric_table(tmp_path, 17 if table == "blank" else None)
    spec = _spec(path, **{"label_values": [0, 1], **extra})
    with pytest.raises(DataError, match="^" + message) as info:  # in the dataset job
        prepare_dataset(spec, tmp_path / "out", "d")
    assert "\n" not in str(info.value) and not (tmp_path / "out" / "meta.json").exists()
    with pytest.raises(ConfigError, match="^config: " + message):  # and before any job
        load_config(REPO / "config.yaml", {"datasets": {"d": spec}, "grid": {"datasets": ["d"]}})


def test_blank_labels_are_dropped_when_asked(tmp_path):
    path = _numeric_table(tmp_path, blank_row=17)
    kept = shape_table(pd.read_csv(path), _spec(path, label_values=[0, 1], drop_other_labels=True), "d", "train")
    assert len(kept) == 79


def test_a_file_that_is_not_utf8_names_itself_and_the_encoding_key(tmp_path):
    path = tmp_path / "latin.csv"
    rows = "".join(f'"caf\xe9 film {"with a dog" if i % 3 else ""} {i}",{"good" if i % 2 else "bad"}\n' for i in range(80))
    path.write_bytes(("body,y\n" + rows).encode("latin-1"))
    spec = _spec(path, group={"rule": "regex", "pattern": "dog", "fields": ["text"]})
    with pytest.raises(ConfigError, match=r"latin.csv is not utf-8 text .*set datasets.d.read_options.encoding"):
        load_config(REPO / "config.yaml", {"datasets": {"d": spec}, "grid": {"datasets": ["d"]}})
    with pytest.raises(DataError, match=r"latin.csv is not utf-8 text .*set datasets.d.read_options.encoding"):
        prepare_dataset(spec, tmp_path / "out", "d")
    meta = prepare_dataset({**spec, "read_options": {"encoding": "latin-1"}}, tmp_path / "out", "d")
    assert read_split(tmp_path / "out/train.jsonl")["text"].str.contains("café").any() and meta["dataset"] == "d"


def test_balance_labels_samples_every_label_equally_and_meta_says_the_shares(tmp_path):
    path = tmp_path / "skewed.csv"
    labels = [1] * 82 + [0] * 18
    pd.DataFrame({"body": [f"a film number {i}" for i in range(100)], "y": labels}).to_csv(path, index=False)
    spec = _spec(path, label_values=[0, 1], eval_fraction=0.2, min_group_size=1)
    skewed = prepare_dataset(spec, tmp_path / "skewed", "d")
    assert skewed["train_label_shares"]["positive"] > 0.7
    balanced = prepare_dataset({**spec, "balance_labels": True}, tmp_path / "balanced", "d")
    train = read_split(tmp_path / "balanced" / "train.jsonl")
    counts = train["label"].value_counts()
    assert counts[0] == counts[1] >= 10  # every negative of the training pool, as many positives
    assert balanced["train_label_shares"] == {"negative": 0.5, "positive": 0.5}
    prepare_dataset({**spec, "balance_labels": True, "n_train": 10}, tmp_path / "capped", "d")
    capped = read_split(tmp_path / "capped" / "train.jsonl")
    assert len(capped) == 10 and set(capped["label"].value_counts()) == {5}
